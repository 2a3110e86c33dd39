// The seed's outbound path (seed/architecture.md), rebuilt for the benchmarks with BullMQ,
// ioredis and pg, against the same PostgreSQL as the project's own path.
//
//   node seed.js schema  --pg URL                  create the seed's `messages` table (schema seed)
//   node seed.js worker  --pg URL --redis URL      the worker; prints "ready" once listening
//   node seed.js produce --pg URL --redis URL --total N --producers P [--rate R]
//
// What is taken from the note:
// - API layer (producer): the auth/permission check (does group_assignments link the group to
//   one of the sender's employee groups?), the message row written as `pending` (the audit
//   log), then the job added to the Redis queue `whatsapp-queue`: the seed's dual write, two
//   systems, two round trips, no transaction across them. The check and the insert are one
//   statement (one round trip), as the project's send_message is one call.
// - Worker: pops `{ messageId, groupJid, content, senderId }`, finds the group's session (an
//   in-memory map: the cheapest lookup the seed could make), "sends" through a zero-latency
//   stand-in for Baileys' sock.sendMessage (the same as the project's simulated transport in
//   the benchmarks: no latency, no failures), then updates the row to `sent`. The note asks for
//   neither per-group order nor a concurrency: BullMQ's Worker with --concurrency jobs at once
//   (default 50) and a pg pool of --pool connections (default 20).
// - Redis: the caller starts it with AOF everysec (the note's "Redis persistence").
// Two columns the note does not have are written for the measurement only: sent_at (the stand-in's
// acknowledgement time, as the project's poller writes it) and updated_at (the `sent` write's
// transaction start).

import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";
import pg from "pg";

const QUEUE = "whatsapp-queue";

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    pg: { type: "string" },
    redis: { type: "string", default: "redis://127.0.0.1:6379" },
    total: { type: "string", default: "1000" },
    producers: { type: "string", default: "1" },
    rate: { type: "string", default: "0" },
    concurrency: { type: "string", default: "50" },
    pool: { type: "string", default: "20" },
    sender: { type: "string", default: "00000000-0000-4000-8000-0000000e2e01" },
    groups: { type: "string", default: "20" },
  },
});

// Wall-clock seconds with sub-millisecond precision (Date.now() is whole milliseconds).
const nowSeconds = () => (performance.timeOrigin + performance.now()) / 1000;

function redis() {
  // BullMQ's workers need maxRetriesPerRequest: null (blocking commands).
  return new IORedis(opts.redis, { maxRetriesPerRequest: null });
}

const SCHEMA = `
create schema if not exists seed;
drop table if exists seed.messages;
drop type if exists seed.message_status;
create type seed.message_status as enum ('pending', 'sent', 'delivered', 'read', 'failed');
create table seed.messages (
  id uuid primary key default gen_random_uuid(),
  wa_message_id varchar,
  group_jid varchar not null,
  sender_id uuid not null,
  content text not null,
  status seed.message_status not null default 'pending',
  error_log text,
  created_at timestamptz not null default now(),
  sent_at timestamptz,
  updated_at timestamptz
);`;

// The API's permission check and the audit-log row in one round trip; no row: not allowed.
const INSERT = `
insert into seed.messages (group_jid, sender_id, content)
select $1::text, $2::uuid, $3::text
where exists (
  select 1 from public.group_assignments ga
  join public.employee_group_members m on m.employee_group_id = ga.employee_group_id
  where ga.group_jid = $1::text and m.user_id = $2::uuid)
returning id`;

const MARK_SENT = `
update seed.messages
set status = 'sent', wa_message_id = $2, sent_at = to_timestamp($3), updated_at = now()
where id = $1`;

async function schema() {
  const client = new pg.Client({ connectionString: opts.pg });
  await client.connect();
  await client.query(SCHEMA);
  await client.end();
}

async function worker() {
  const pool = new pg.Pool({ connectionString: opts.pg, max: Number(opts.pool) });
  // The note's "session check": which admin session owns the group, read once.
  const sessions = new Map(
    (await pool.query("select jid, session_id from public.whatsapp_groups")).rows.map((r) => [
      r.jid,
      r.session_id,
    ]),
  );
  const sock = {
    // Zero-latency stand-in for Baileys: accepts at once with a WhatsApp-like id.
    async sendMessage(jid, _content) {
      return { key: { id: `3EB0${randomBytes(8).toString("hex").toUpperCase()}`, remoteJid: jid } };
    },
  };
  const connection = redis();
  const w = new Worker(
    QUEUE,
    async (job) => {
      const { messageId, groupJid, content } = job.data;
      if (!sessions.has(groupJid)) throw new Error(`no session for ${groupJid}`);
      const sent = await sock.sendMessage(groupJid, { text: content });
      const ackedAt = nowSeconds();
      await pool.query(MARK_SENT, [messageId, sent.key.id, ackedAt]);
    },
    { connection, concurrency: Number(opts.concurrency) },
  );
  w.on("failed", (job, err) => console.error(`job ${job?.id} failed: ${err.message}`));
  await w.waitUntilReady();
  console.log("ready");
  const stop = async () => {
    await w.close();
    await connection.quit();
    await pool.end();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function producer(queue, client, count, nextStart) {
  const groups = Number(opts.groups);
  for (let i = 0; i < count; i++) {
    const wait = nextStart ? nextStart() - performance.now() : 0;
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const g = Math.floor(Math.random() * groups);
    const groupJid = `1203630000${String(g).padStart(8, "0")}@g.us`;
    const content = `Poliçe yenileme hatırlatması #${g}`;
    const { rows } = await client.query(INSERT, [groupJid, opts.sender, content]);
    if (rows.length !== 1) throw new Error(`not allowed to send to ${groupJid}`);
    // The second write of the dual write: a crash between the two leaves a pending row that
    // nothing will ever send.
    await queue.add(
      "send",
      { messageId: rows[0].id, groupJid, content, senderId: opts.sender },
      { removeOnComplete: true },
    );
  }
}

async function produce() {
  const total = Number(opts.total);
  const producers = Number(opts.producers);
  const rate = Number(opts.rate);
  const parts = [];
  for (let p = 0; p < producers; p++) {
    const client = new pg.Client({ connectionString: opts.pg });
    await client.connect();
    const connection = redis();
    const queue = new Queue(QUEUE, { connection });
    await queue.waitUntilReady();
    parts.push({ client, queue, connection });
  }
  // As pgbench -R: start times drawn from a Poisson process at `rate` per second overall; a
  // call that falls behind its schedule starts at once.
  let schedule = performance.now();
  const nextStart = rate
    ? () => {
        schedule += (-Math.log(1 - Math.random()) / rate) * 1000;
        return schedule;
      }
    : null;
  const started = performance.now();
  const per = Math.floor(total / producers);
  await Promise.all(parts.map(({ client, queue }) => producer(queue, client, per, nextStart)));
  const seconds = (performance.now() - started) / 1000;
  for (const { client, queue, connection } of parts) {
    await queue.close();
    await connection.quit(); // BullMQ leaves a connection it was given open
    await client.end();
  }
  console.log(JSON.stringify({ messages: per * producers, seconds }));
}

const commands = { schema, worker, produce };
const command = commands[positionals[0]];
if (!command || !opts.pg) {
  console.error("usage: node seed.js schema|worker|produce --pg URL [--redis URL] ...");
  process.exit(2);
}
command().catch((err) => {
  console.error(err);
  process.exit(1);
});
