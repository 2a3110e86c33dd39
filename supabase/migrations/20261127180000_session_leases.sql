-- Several pollers share the WhatsApp sessions: each session is held by one poller at a time
-- through a lease that the holder's heartbeat renews; an expired lease is taken over.

alter table public.whatsapp_sessions
  add column lease_owner text,
  add column lease_expires_at timestamptz,
  add column wa_jid text,
  add column wa_lid text,
  add column paired_at timestamptz;
comment on column public.whatsapp_sessions.lease_owner is 'The poller holding this session now.';
comment on column public.whatsapp_sessions.wa_jid is 'Our own account (phone JID, no device part).';
comment on column public.whatsapp_sessions.wa_lid is 'Our own account''s LID (no device part).';
create index whatsapp_sessions_lease_owner_idx on public.whatsapp_sessions (lease_owner);

grant update (lease_owner, lease_expires_at, wa_jid, wa_lid, paired_at)
  on public.whatsapp_sessions to wa_poller;

-- The pollers alive now, so that each takes its share of the sessions. Not in `public`: no API
-- role has any privilege on it.
create table private.pollers (
  id text primary key,
  hostname text not null,
  pid integer not null,
  started_at timestamptz not null default now(),
  heartbeat_at timestamptz not null default now()
);
grant usage on schema private to wa_poller;
grant select, insert, update, delete on private.pollers to wa_poller;

create or replace view public.whatsapp_sessions_overview with (security_invoker = true) as
select
  s.id,
  s.phone_number,
  s.status,
  s.status_reason,
  s.updated_at as last_heartbeat,
  now() - s.updated_at as heartbeat_age,
  coalesce(q.queue_depth, 0) as queue_depth,
  q.oldest_enqueued_at,
  coalesce(m.pending, 0) as pending_messages,
  coalesce(m.failed, 0) as failed_messages,
  (select count(*) from public.whatsapp_groups g where g.session_id = s.id and g.is_active) as active_groups,
  s.lease_owner,
  s.lease_expires_at
from public.whatsapp_sessions s
left join lateral (
  select count(*) as queue_depth, min(qm.enqueued_at) as oldest_enqueued_at
  from pgmq.q_whatsapp_outbound qm
  join public.whatsapp_groups g on g.jid = qm.headers ->> 'x-pgmq-group'
  where g.session_id = s.id
) q on true
left join lateral (
  select count(*) filter (where msg.status in ('pending', 'sending')) as pending,
         count(*) filter (where msg.status = 'failed') as failed
  from public.messages msg
  join public.whatsapp_groups g on g.jid = msg.group_jid
  where g.session_id = s.id and msg.status in ('pending', 'sending', 'failed')
) m on true;

-- Group sync writes whole participant lists (a 256-member group is ~40 kB of JSON): lz4
-- compresses them several times faster than the default, where the server was built with it.
do $$
begin
  alter table public.whatsapp_groups alter column participants set compression lz4;
exception when feature_not_supported then
  raise notice 'lz4 is not available: participants keep the default compression';
end
$$;

-- Pairing: `wa-poller sessions add` and `wa-poller pair` ask for it; the holding poller then
-- starts the session's client, whose QR codes land in qr_code until the phone scans one.
alter table public.whatsapp_sessions add column pair_requested_at timestamptz;

-- The PostgreSQL session store (WA_SESSION_STORE=postgres) holds the WhatsApp accounts' keys.
-- whatsmeow creates its tables in its connection's default schema, so it connects as its own
-- role whose search_path is schema `whatsmeow`, which no API role can use. LOGIN is enabled by
-- `wa-poller db bootstrap --session-store-password`.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'wa_session_store') then
    create role wa_session_store nologin noinherit;
  end if;
end
$$;
create schema if not exists whatsmeow;
revoke all on schema whatsmeow from public;
grant usage, create on schema whatsmeow to wa_session_store;
alter role wa_session_store set search_path = whatsmeow;
