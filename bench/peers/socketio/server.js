// A Socket.IO 4.x chat as the docs build it, with the Redis adapter so rooms span processes:
// the peer the benchmark drives. PORT and REDIS_URL come from the environment.
// Client events: "join" (room, ack) and "chat" (room, body); the server emits "message" (body)
// to everyone in the room, the sender included. No history, no acks of delivery, no presence.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { Redis } = require("ioredis");

const port = Number(process.env.PORT || 3000);
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";

const pubClient = new Redis(redisUrl);
const subClient = pubClient.duplicate();

const httpServer = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(httpServer, {
  adapter: createAdapter(pubClient, subClient),
  // WebSocket only: several nodes without sticky sessions (the multi-node docs' advice).
  transports: ["websocket"],
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack("ok");
  });
  socket.on("chat", (room, body) => {
    io.to(String(room)).emit("message", body);
  });
});

Promise.all([
  new Promise((resolve) => pubClient.once("ready", resolve)),
  new Promise((resolve) => subClient.once("ready", resolve)),
]).then(() => {
  httpServer.listen(port, "127.0.0.1", () => {
    console.log(`socket.io peer on 127.0.0.1:${port} (pid ${process.pid})`);
  });
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    pubClient.disconnect();
    subClient.disconnect();
    process.exit(0);
  });
}
