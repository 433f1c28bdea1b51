// The BullMQ peer of `sender-throughput`: the same deliveries as jobs of one BullMQ queue. All
// jobs are enqueued first (addBulk), then one Worker drains them, each job a signed HTTP POST of
// the generic channel's small JSON body to a loopback receiver (the benchmark's own, so both
// sides deliver to the same receiver). Timing starts when the worker starts and stops at the
// last job completed, as chatdesk's drain rate is timed over its queue.
//
//   node worker.mjs --redis redis://127.0.0.1:6379 --url http://127.0.0.1:40000/replies --jobs 20000 --concurrency 50 --modes call,none
//
// Prints one JSON object per mode on stdout: {"mode", "jobs", "completed", "failed",
// "enqueue_seconds", "seconds", "jobs_per_sec"}. Mode `call` makes the POST; `none` completes
// each job without a call (BullMQ's own cost per job).

import { createHmac } from "node:crypto";
import http from "node:http";
import { performance } from "node:perf_hooks";
import process from "node:process";
import { Queue, Worker } from "bullmq";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, word, index, words) => {
    if (word.startsWith("--")) pairs.push([word.slice(2), words[index + 1]]);
    return pairs;
  }, []),
);
const redisUrl = new URL(args.redis ?? "redis://127.0.0.1:6379");
const connection = { host: redisUrl.hostname, port: Number(redisUrl.port || 6379) };
const receiver = args.url ? new URL(args.url) : null;
const jobs = Number(args.jobs ?? 20000);
const concurrency = Number(args.concurrency ?? 50);
const conversations = Number(args.conversations ?? 500);
const modes = String(args.modes ?? "call").split(",");
const secret = "bench-secret";
// One keep-alive connection per concurrent job, as a pooled HTTP client would keep.
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });

// chatdesk's generic channel: a signed POST whose answer may name the receiver's id for the
// message, which is the job's result (chatdesk records it on the delivery).
function deliver(data) {
  const body = JSON.stringify(data);
  const signature = `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
  return new Promise((resolve, reject) => {
    const request = http.request(
      {
        agent,
        host: receiver.hostname,
        port: receiver.port,
        path: receiver.pathname,
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          "Content-Length": Buffer.byteLength(body),
          "X-Chatdesk-Signature": signature,
          "Idempotency-Key": data.event_id,
        },
      },
      (response) => {
        let text = "";
        response.setEncoding("utf8");
        response.on("data", (chunk) => (text += chunk));
        response.on("end", () => {
          if (response.statusCode < 200 || response.statusCode >= 300) {
            reject(new Error(`the receiver answered HTTP ${response.statusCode}`));
            return;
          }
          resolve(JSON.parse(text).id ?? null);
        });
      },
    );
    request.on("error", reject);
    request.end(body);
  });
}

async function run(mode) {
  const name = `deliveries-${mode}`;
  const queue = new Queue(name, { connection });
  await queue.obliterate({ force: true });
  const enqueueStarted = performance.now();
  for (let first = 0; first < jobs; first += 1000) {
    const batch = [];
    for (let index = first; index < Math.min(first + 1000, jobs); index += 1) {
      batch.push({
        name: "deliver",
        data: {
          event_id: `bullmq-${mode}-${index}`,
          conversation_id: `conversation-${index % conversations}`,
          to: `c-${index % conversations}`,
          text: "benchmark reply",
        },
        // BullMQ's advice for a busy queue: finished jobs do not pile up in Redis.
        opts: { removeOnComplete: true, removeOnFail: 1000 },
      });
    }
    await queue.addBulk(batch);
  }
  const enqueueSeconds = (performance.now() - enqueueStarted) / 1000;
  const processor = mode === "call" ? (job) => deliver(job.data) : async () => null;
  const worker = new Worker(name, processor, { connection, concurrency, autorun: false });
  let completed = 0;
  let failed = 0;
  let finishedAt = 0;
  const finished = new Promise((resolve) => {
    const settle = () => {
      if (completed + failed === jobs) {
        finishedAt = performance.now();
        resolve();
      }
    };
    worker.on("completed", () => {
      completed += 1;
      settle();
    });
    worker.on("failed", () => {
      failed += 1;
      settle();
    });
  });
  const started = performance.now();
  const running = worker.run();
  await finished;
  await worker.close();
  await running;
  await queue.close();
  const seconds = (finishedAt - started) / 1000;
  console.log(
    JSON.stringify({
      mode,
      jobs,
      completed,
      failed,
      enqueue_seconds: enqueueSeconds,
      seconds,
      jobs_per_sec: completed / seconds,
    }),
  );
}

for (const mode of modes) {
  if (mode === "call" && !receiver) throw new Error("mode `call` needs --url");
  await run(mode);
}
agent.destroy();
