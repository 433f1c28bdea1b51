//! Lua scripts called by their SHA-1 (`EVALSHA`), so a script's text crosses the network once
//! per server rather than with every call. A server that does not know the script (first call,
//! after a restart or a failover, a new cluster node) answers `NOSCRIPT`; the call is then made
//! with `EVAL`, which runs the script on the node that owns the keys and caches it there.

use fred::prelude::*;
use fred::types::{FromValue, MultipleKeys, MultipleValues};
use sha1::{Digest, Sha1};

pub struct Script {
    body: String,
    sha: String,
}

impl Script {
    pub fn new(body: impl Into<String>) -> Self {
        let body = body.into();
        let sha = Sha1::digest(body.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect();
        Self { body, sha }
    }

    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// `EVALSHA`, or `EVAL` when the server does not have the script yet.
    pub async fn call<R, K, V>(&self, client: &Client, keys: K, args: V) -> Result<R, Error>
    where
        R: FromValue,
        K: Into<MultipleKeys> + Send,
        V: TryInto<MultipleValues> + Send,
        V::Error: Into<Error> + Send,
    {
        let keys: MultipleKeys = keys.into();
        let args: MultipleValues = args.try_into().map_err(Into::into)?;
        match client.evalsha(self.sha.as_str(), keys.clone(), args.clone()).await {
            Err(error) if error.details().starts_with("NOSCRIPT") => client.eval(self.body.as_str(), keys, args).await,
            result => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sha_is_redis_script_sha() {
        // SCRIPT LOAD "return 1" on Redis 7.
        assert_eq!(Script::new("return 1").sha(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
