-- What the poller's /metrics endpoint reads from the database: the backlog of each session it
-- holds, and how many of their messages expired. Expiry happens inside take_outbound (its
-- expire_outbound, and its claim's TTL check), which returns nothing of it to the poller, so the
-- database counts it.

-- One row per expired message, written by the trigger below and folded into the totals by
-- outbound_backlog. Insert-only, so that expiring transactions take no lock another can wait
-- for: a per-session counter row updated in place would let two pollers expiring messages of
-- the same two sessions in opposite orders deadlock.
create table private.outbound_expiry_log (
  session_id uuid not null
);
alter table private.outbound_expiry_log enable row level security;
revoke all on private.outbound_expiry_log from public;

-- Expired messages per session since the session was first counted; never decremented (a
-- Prometheus counter). No foreign key: a deleted session's row only stays behind.
create table private.outbound_expiries (
  session_id uuid primary key,
  expired bigint not null default 0
);
alter table private.outbound_expiries enable row level security;
revoke all on private.outbound_expiries from public;

-- Runs as its owner: whichever role's statement expires the message, the log is written.
create function private.log_outbound_expiry() returns trigger
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  insert into private.outbound_expiry_log (session_id)
  select g.session_id from public.whatsapp_groups g
  where g.jid = new.group_jid and g.session_id is not null;
  return null;
end
$$;

-- The WHEN clause keeps every other update free of a function call. 'expired:' starts the
-- error both expire_outbound and claim_outbound write.
create trigger messages_log_expiry after update of status on public.messages
  for each row
  when (new.status = 'failed' and old.status <> 'failed' and new.error_log like 'expired:%')
  execute function private.log_outbound_expiry();

-- The backlog of each session held by `p_me`, with its expiries: `depth` (queued jobs of its
-- groups, in flight included), `oldest_age_seconds` (0 when empty) and `expired`. Each poller
-- reports only its own sessions, so summing over pollers counts each session once. Cost: per
-- group of those sessions, one range of the group index (the count) and one probe of the queue's
-- primary key (the head); nothing of other sessions' groups or of the archive. First the log is
-- folded into the totals, by one caller at a time (the others read the log as it is).
create function private.outbound_backlog(p_me text)
returns table (session_id uuid, depth bigint, oldest_age_seconds double precision, expired bigint)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if pg_catalog.pg_try_advisory_xact_lock('private.outbound_expiries'::regclass::oid::bigint) then
    with moved as (
      delete from private.outbound_expiry_log l returning l.session_id
    )
    insert into private.outbound_expiries as e (session_id, expired)
    select m.session_id, count(*) from moved m group by m.session_id order by m.session_id
    on conflict on constraint outbound_expiries_pkey
    do update set expired = e.expired + excluded.expired;
  end if;

  return query
  select s.id,
         coalesce(sum(b.depth), 0)::bigint,
         coalesce(extract(epoch from now() - min(h.enqueued_at)), 0)::double precision,
         coalesce(max(e.expired), 0)
           + (select count(*) from private.outbound_expiry_log l where l.session_id = s.id)
  from public.whatsapp_sessions s
  left join public.whatsapp_groups g on g.session_id = s.id
  left join lateral (
    select count(*) as depth, min(q.msg_id) as head
    from pgmq.q_whatsapp_outbound q
    where (q.headers ->> 'x-pgmq-group') = g.jid::text
  ) b on true
  left join pgmq.q_whatsapp_outbound h on h.msg_id = b.head
  left join private.outbound_expiries e on e.session_id = s.id
  where s.lease_owner = p_me
  group by s.id
  order by s.id;
end
$$;

-- Callable by the poller only (see the function privileges migration).
revoke execute on function private.log_outbound_expiry(), private.outbound_backlog(text)
  from public, anon, authenticated, service_role;
grant execute on function private.outbound_backlog(text) to wa_poller;
