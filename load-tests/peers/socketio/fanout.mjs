// The Socket.IO peer of `gateway-load`: the same fan-out on Socket.IO 4.8 with the Redis
// streams adapter. Two servers (child processes), clients in rooms of two with the pair's members
// on different servers, a publisher emitting at a fixed rate, open loop; latency from the
// publisher building a message to a client receiving it (one clock: everything runs on this
// machine and the time travels in the message).
//
//   node fanout.mjs --redis redis://127.0.0.1:6379 --clients 1000 --rates 1000,5000 --seconds 10 --ports 41000,41001
//
// Prints one JSON object per rate on stdout: {"rate", "sent", "received", "p50_ms", "p99_ms",
// "p999_ms", "servers_cpu"} where servers_cpu is the two servers' CPU over the run (1 = one core).

import { fork } from "node:child_process";
import { performance } from "node:perf_hooks";
import process from "node:process";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, word, index, words) => {
    if (word.startsWith("--")) pairs.push([word.slice(2), words[index + 1]]);
    return pairs;
  }, []),
);

function now() {
  return performance.timeOrigin + performance.now();
}

if (args.role === "server") {
  const { Server } = await import("socket.io");
  const { createAdapter } = await import("@socket.io/redis-streams-adapter");
  const { Redis } = await import("ioredis");
  const redis = new Redis(args.redis);
  const io = new Server({ adapter: createAdapter(redis), serveClient: false });
  io.on("connection", (socket) => {
    socket.on("join", (room, done) => {
      socket.join(room);
      done();
    });
    // The publisher's message goes to the room on whichever server its members are.
    socket.on("publish", (room, payload) => io.to(room).emit("message", payload));
  });
  io.listen(Number(args.port));
  process.on("message", (message) => {
    if (message === "cpu") {
      const used = process.cpuUsage();
      process.send({ cpu: (used.user + used.system) / 1e6 });
    }
  });
  process.send({ ready: true });
} else {
  await bench();
}

async function bench() {
  const { io } = await import("socket.io-client");
  const clients = Number(args.clients ?? 1000);
  const seconds = Number(args.seconds ?? 10);
  const rates = String(args.rates ?? "1000").split(",").map(Number);
  const payloadBytes = Number(args["payload-bytes"] ?? 200);
  const ports = String(args.ports ?? "41000,41001").split(",").map(Number);

  const servers = await Promise.all(
    ports.map(
      (port) =>
        new Promise((resolve, reject) => {
          const child = fork(new URL(import.meta.url).pathname, ["--role", "server", "--port", port, "--redis", args.redis]);
          child.once("message", () => resolve(child));
          child.once("error", reject);
        }),
    ),
  );
  const serverCpu = async () => {
    const answers = await Promise.all(
      servers.map((child) => new Promise((resolve) => {
        child.once("message", (message) => resolve(message.cpu));
        child.send("cpu");
      })),
    );
    return answers.reduce((sum, value) => sum + value, 0);
  };

  let latencies = [];
  const sockets = [];
  for (let index = 0; index < clients; index++) {
    const port = ports[index % 2];
    const socket = io(`http://127.0.0.1:${port}`, { transports: ["websocket"], reconnection: false });
    await new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    });
    await new Promise((resolve) => socket.emit("join", `room-${Math.floor(index / 2)}`, resolve));
    socket.on("message", (payload) => latencies.push(now() - payload.sent));
    sockets.push(socket);
  }
  const publishers = [];
  for (const port of ports) {
    const socket = io(`http://127.0.0.1:${port}`, { transports: ["websocket"], reconnection: false });
    await new Promise((resolve) => socket.once("connect", resolve));
    publishers.push(socket);
  }
  const padding = "x".repeat(payloadBytes);
  const rooms = Math.floor(clients / 2);

  for (const rate of rates) {
    latencies = [];
    const total = rate * seconds;
    const cpuBefore = await serverCpu();
    const begin = now() + 200;
    let sent = 0;
    await new Promise((resolve) => {
      const tick = () => {
        const due = Math.min(total, Math.floor(((now() - begin) * rate) / 1000));
        while (sent < due) {
          const room = `room-${sent % rooms}`;
          publishers[sent % 2].emit("publish", room, { n: sent, sent: now(), text: padding });
          sent++;
        }
        if (sent >= total) resolve();
        else setTimeout(tick, 1);
      };
      setTimeout(tick, 200);
    });
    const elapsed = (now() - begin) / 1000;
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const cpu = (await serverCpu()) - cpuBefore;
    const sorted = latencies.slice().sort((a, b) => a - b);
    const at = (fraction) => sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] : null;
    console.log(JSON.stringify({
      rate,
      sent,
      sent_per_sec: sent / elapsed,
      received: sorted.length,
      p50_ms: at(0.5),
      p99_ms: at(0.99),
      p999_ms: at(0.999),
      servers_cpu: cpu / (elapsed + 2),
    }));
  }
  for (const socket of [...sockets, ...publishers]) socket.close();
  for (const child of servers) child.kill();
  process.exit(0);
}
