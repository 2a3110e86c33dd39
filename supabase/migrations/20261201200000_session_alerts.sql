-- Session alerts for admins: what WhatsApp says about a session (a temporary ban and when it
-- ends, a client too old to connect, a logout and its reason, keepalives that go unanswered)
-- on the session row and in an admin-only log; and retry receipts (a participant could not
-- decrypt a message: "waiting for this message") counted per message and participant.

-- `banned`: WhatsApp refuses the account until the ban's end (the poller connects again then);
-- `outdated`: WhatsApp refuses this client's version until the poller is upgraded. Not used
-- below: a new enum value cannot be used in the transaction that adds it.
alter type public.session_status add value if not exists 'banned';
alter type public.session_status add value if not exists 'outdated';

-- Since when the session is in its status, whoever changed it (the poller, an admin); and its
-- last event as a line for the overview, which service_role reads too: a view reading
-- session_events would fail for it (it has no privilege there, below).
alter table public.whatsapp_sessions
  add column status_since timestamptz not null default now(),
  add column last_event text,
  add column last_event_at timestamptz;
comment on column public.whatsapp_sessions.status_since is 'When the status last changed.';
comment on column public.whatsapp_sessions.last_event is
  'The last session event (see session_events), as one line; for the Studio overview.';

create function private.touch_status_since() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  new.status_since := now();
  return new;
end
$$;

create trigger whatsapp_sessions_status_since before update of status on public.whatsapp_sessions
  for each row when (new.status is distinct from old.status)
  execute function private.touch_status_since();

-- What happened to each session, for admins. `until`: the end of a temporary ban.
create table public.session_events (
  id bigint generated always as identity primary key,
  session_id uuid not null references public.whatsapp_sessions (id) on delete cascade,
  kind text not null constraint session_events_kind check (
    kind in ('temporary_ban', 'client_outdated', 'logged_out', 'keepalive_timeout',
             'keepalive_restored')),
  reason text,
  until timestamptz,
  at timestamptz not null default now()
);
create index session_events_session_id_at_idx on public.session_events (session_id, at);
alter table public.session_events enable row level security;

create policy "Admins can read session events" on public.session_events
  for select to authenticated using ((select private.is_admin()));

-- Admins read it through RLS; nobody writes it but the function below (not even service_role,
-- which bypasses RLS: it has no privilege here).
revoke all on public.session_events from public, anon, authenticated, service_role;
grant select on public.session_events to authenticated;

-- The poller records an event of a session it holds: the log row, and on the session row the
-- status it implies (banned, outdated; others keep the status), its reason and the last event,
-- in one transaction. A session held by another poller is left alone (returns false).
create function private.record_session_event(
  p_me text, p_session_id uuid, p_kind text, p_reason text, p_until timestamptz
) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_status text := case p_kind when 'temporary_ban' then 'banned'
                               when 'client_outdated' then 'outdated' end;
begin
  update public.whatsapp_sessions s
  set status = coalesce(v_status, s.status::text)::public.session_status,
      status_reason = case when p_kind = 'keepalive_restored' and s.status_reason like 'keepalive%'
                           then null else coalesce(p_reason, s.status_reason) end,
      last_event = p_kind || coalesce(': ' || p_reason, ''),
      last_event_at = now(),
      updated_at = now()
  where s.id = p_session_id and s.lease_owner = p_me;
  if not found then
    return false;
  end if;
  insert into public.session_events (session_id, kind, reason, until)
  values (p_session_id, p_kind, p_reason, p_until);
  return true;
end
$$;

revoke execute on function private.touch_status_since(),
  private.record_session_event(text, uuid, text, text, timestamptz)
  from public, anon, authenticated, service_role;
grant execute on function private.record_session_event(text, uuid, text, text, timestamptz)
  to wa_poller;

-- Retry receipts: a participant's phone could not decrypt the message and asked for it again
-- (whatsmeow re-sends it while it still holds it). Counted per message and participant, with the
-- time of the last one.
alter table public.message_receipts
  add column retry_count integer not null default 0
    constraint message_receipts_retry_count check (retry_count >= 0),
  add column last_retry_at timestamptz;
grant update (retry_count, last_retry_at) on public.message_receipts to wa_poller;
-- The attention view below finds the few messages with retries without reading the others.
create index message_receipts_retried_idx on public.message_receipts (message_id)
  where retry_count > 0;

-- The overview, as before, with since when the status holds and the last event.
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
  s.lease_expires_at,
  s.status_since,
  s.last_event,
  s.last_event_at
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

-- Messages needing attention: those that failed, and those some participants could not
-- decrypt ("2 participants could not decrypt"). `problem` says which, for a person.
create view public.messages_needing_attention with (security_invoker = true) as
select
  m.id,
  m.created_at,
  m.updated_at,
  m.status,
  m.group_jid,
  g.name as group_name,
  g.session_id,
  m.sender_id,
  m.attempts,
  m.error_log,
  coalesce(r.participants, 0) as undecrypted_participants,
  r.last_retry_at,
  case when m.status = 'failed' then 'failed: ' || coalesce(m.error_log, 'no reason recorded')
       else r.participants || case r.participants when 1 then ' participant' else ' participants' end
            || ' could not decrypt'
  end as problem,
  m.content
from public.messages m
join public.whatsapp_groups g on g.jid = m.group_jid
left join lateral (
  select count(*) as participants, max(mr.last_retry_at) as last_retry_at
  from public.message_receipts mr
  where mr.message_id = m.id and mr.retry_count > 0
) r on true
where m.status = 'failed'
   or m.id in (select mr.message_id from public.message_receipts mr where mr.retry_count > 0);

revoke all on public.messages_needing_attention from anon, authenticated;
grant select on public.messages_needing_attention to service_role;
