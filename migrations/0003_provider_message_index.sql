-- Provider status webhooks name a message by the provider's id (e.g. a WhatsApp wamid).
CREATE INDEX messages_by_provider_id ON messages (tenant_id, provider_message_id) WHERE provider_message_id IS NOT NULL;
