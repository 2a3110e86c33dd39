-- The outbound queue's transitions, one function each (take, which also settles and expires
-- what cannot go; sent, retry, fail, give back, extend), and the wake-up. They are the poller's only access to the queue: each
-- is SECURITY DEFINER and written on pgmq 1.5.1's columns of the queue table (msg_id, read_ct,
-- enqueued_at, vt, message, headers), so they work from pgmq 1.5.1 to the newest. The read is one
-- round trip with plans cached by plpgsql (pgmq's read functions plan their SQL at every call),
-- and the wake-up costs the producers nothing while the poller is busy.

-- A job to send now: what the poller's lane needs, nothing to decode.
create type private.outbound_job as (
  msg_id bigint, message_id uuid, group_jid text, session_id uuid, content text, attempts integer
);

-- The group key, indexed with the queue order: the read walks each group from its head, so it
-- costs what the batch and the caller's groups cost, not what the queue holds.
create index q_whatsapp_outbound_group_idx
  on pgmq.q_whatsapp_outbound ((headers ->> 'x-pgmq-group'), msg_id);

-- A leased job and what becomes of it: `send`, `done` (archive), `fail` (with `error`), `back`.
create type private.outbound_settling as (
  msg_id bigint, message_id uuid, group_jid text, session_id uuid, content text,
  attempts integer, outcome text, error text
);

-- Settles a batch of leased jobs: marks `sending` and returns those that can go now, and, in the
-- same transaction, finishes the others. Archived: jobs whose message is gone or already final.
-- Failed without an attempt: messages past the TTL, or of an inactive or read-only group.
-- Visible again at once: jobs behind an earlier message of their group that is still queued
-- outside what the caller holds (`p_held`) or this batch (it must go first), and jobs whose
-- session the caller no longer holds.
create function private.claim_outbound(
  p_msg_ids bigint[],
  p_message_ids uuid[],
  p_sessions uuid[],
  p_me text,
  p_held bigint[],
  p_ttl double precision
) returns setof private.outbound_job
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_groups text[];
  v_earliest bigint[];
  v_batch private.outbound_settling[];
  v_done bigint[];
  v_fail_ids uuid[];
  v_fail_msg_ids bigint[];
  v_fail_errors text[];
  v_back bigint[];
begin
  -- The earliest message of each of the batch's groups that is neither in the batch nor held
  -- by the caller, through the group index.
  select coalesce(array_agg(e.group_jid), '{}'), coalesce(array_agg(e.msg_id), '{}')
  into v_groups, v_earliest
  from (select distinct b.headers ->> 'x-pgmq-group' as group_jid
        from pgmq.q_whatsapp_outbound b where b.msg_id = any(p_msg_ids)) bg
  cross join lateral (
    select bg.group_jid, q.msg_id
    from pgmq.q_whatsapp_outbound q
    where (q.headers ->> 'x-pgmq-group') = bg.group_jid
      and q.msg_id <> all(p_msg_ids) and q.msg_id <> all(p_held)
    order by q.msg_id
    limit 1
  ) e;

  -- In a variable, not a temporary table: a caller's own pg_temp must play no part here.
  select coalesce(array_agg(row(
         b.msg_id, b.message_id, m.group_jid::text, g.session_id, m.content, m.attempts,
         case
           when m.id is null or m.status not in ('pending', 'sending') then 'done'
           when coalesce(e.msg_id < b.msg_id, false) then 'back'
           when not (g.session_id = any(p_sessions) and s.lease_owner = p_me
                     and s.lease_expires_at > now()) then 'back'
           when m.created_at <= now() - make_interval(secs => p_ttl) then 'fail'
           when not g.is_active then 'fail'
           when g.is_readonly then 'fail'
           else 'send'
         end,
         case
           when m.created_at <= now() - make_interval(secs => p_ttl) then
             format('expired: not sent within %s s (its WhatsApp session was not connected)',
                    p_ttl)
           when not g.is_active then 'group is inactive: the WhatsApp account left it'
           when g.is_readonly then format('group is read-only: %s', g.readonly_reason)
         end)::private.outbound_settling), '{}')
  into v_batch
  from unnest(p_msg_ids, p_message_ids) as b(msg_id, message_id)
  left join public.messages m on m.id = b.message_id
  left join public.whatsapp_groups g on g.jid = m.group_jid
  left join public.whatsapp_sessions s on s.id = g.session_id
  left join unnest(v_groups, v_earliest) as e(group_jid, msg_id) on e.group_jid = m.group_jid;

  select array_agg(b.msg_id) filter (where b.outcome = 'done'),
         array_agg(b.message_id) filter (where b.outcome = 'fail'),
         array_agg(b.msg_id) filter (where b.outcome = 'fail'),
         array_agg(b.error) filter (where b.outcome = 'fail'),
         array_agg(b.msg_id) filter (where b.outcome = 'back')
  into v_done, v_fail_ids, v_fail_msg_ids, v_fail_errors, v_back
  from unnest(v_batch) b;
  if v_done is not null then
    perform private.archive_outbound(v_done);
  end if;
  if v_fail_ids is not null then
    perform private.fail_outbound(v_fail_ids, v_fail_msg_ids, v_fail_errors, false);
  end if;
  if v_back is not null then
    update public.messages m set status = 'pending'
    from unnest(v_batch) b
    where m.id = b.message_id and b.outcome = 'back' and m.status = 'sending';
    perform private.retime_outbound(v_back, 0);
  end if;

  return query
  with claimed as (
    update public.messages m
    set status = 'sending'
    from unnest(v_batch) b
    where m.id = b.message_id and b.outcome = 'send' and m.status in ('pending', 'sending')
    returning m.id
  )
  select b.msg_id, b.message_id, b.group_jid, b.session_id, b.content, b.attempts
  from unnest(v_batch) b
  where b.message_id in (select c.id from claimed c)
  order by b.msg_id;
end
$$;

-- The poller's read: up to `p_qty` jobs to send now, per-group FIFO, from the groups of the
-- sessions the caller holds and has connected (`p_sessions`, with `p_rooms`: how many more of
-- each session's messages it has room for). Messages of other pollers' sessions, of sessions
-- that are down and of groups without a session are not read at all: they wait in the queue
-- until their session is sending, or until expire_outbound fails them.
-- The order is pgmq read_grouped_rr's: a group is offered only while its oldest message is
-- visible; round robin across groups, then in order within each. Its cost follows the caller's
-- groups and the batch, not the backlog: one probe of the group index for each group's head,
-- then, from the groups whose head is visible, at most an even share of the batch each (a lone
-- busy group gives the whole batch; a batch may come out short when shares go unused, and the
-- next read takes the rest). No advisory lock per group: a session's groups are read by one
-- poller, and SKIP LOCKED with the claim's `behind` check hand back anything that would
-- overtake an earlier message. The claim is a statement of its own: it takes a newer snapshot,
-- which sees the message row of every queue row the read took (they commit together).
create function private.take_outbound(
  p_me text,
  p_sessions uuid[],
  p_rooms integer[],
  p_held bigint[],
  p_vt integer,
  p_qty integer,
  p_ttl double precision
) returns setof private.outbound_job
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_jids text[];
  v_session_ids uuid[];
  v_rooms integer[];
  v_heads bigint[];
  v_share integer;
  v_picked bigint[];
  v_locked bigint[];
  v_msg_ids bigint[];
  v_message_ids uuid[];
begin
  perform private.expire_outbound(p_ttl);

  select coalesce(array_agg(h.jid order by h.head), '{}'), coalesce(array_agg(h.session_id order by h.head), '{}'),
         coalesce(array_agg(h.room order by h.head), '{}'), coalesce(array_agg(h.head order by h.head), '{}')
  into v_jids, v_session_ids, v_rooms, v_heads
  from (
    select g.jid::text as jid, g.session_id, r.room, head.msg_id as head
    from unnest(p_sessions, p_rooms) as r(session_id, room)
    join public.whatsapp_sessions s
      on s.id = r.session_id and s.lease_owner = p_me and s.lease_expires_at > now()
    join public.whatsapp_groups g on g.session_id = r.session_id
    cross join lateral (
      select q.msg_id, q.vt
      from pgmq.q_whatsapp_outbound q
      where (q.headers ->> 'x-pgmq-group') = g.jid::text
      order by q.msg_id
      limit 1
    ) head
    where r.room > 0 and head.vt <= clock_timestamp()
  ) h;
  if cardinality(v_jids) = 0 then
    return;
  end if;
  v_share := ceil(p_qty::numeric / cardinality(v_jids))::integer;

  select coalesce(array_agg(c.msg_id order by c.rank_in_group, c.head), '{}')
  into v_picked
  from (
    select t.msg_id, t.rank_in_group, t.head
    from (
      select v.msg_id, v.rank_in_group, h.head, h.room,
             row_number() over (partition by h.session_id
                                order by v.rank_in_group, h.head) as rank_in_session
      from unnest(v_jids, v_session_ids, v_rooms, v_heads) as h(jid, session_id, room, head)
      cross join lateral (
        select w.msg_id, row_number() over (order by w.msg_id) as rank_in_group
        from (
          select q.msg_id, q.vt
          from pgmq.q_whatsapp_outbound q
          where (q.headers ->> 'x-pgmq-group') = h.jid
          order by q.msg_id
          limit least(v_share, h.room)
        ) w
        where w.vt <= clock_timestamp()
      ) v
    ) t
    where t.rank_in_session <= t.room
    order by t.rank_in_group, t.head
    limit p_qty
  ) c;

  if cardinality(v_picked) = 0 then
    return;
  end if;

  select coalesce(array_agg(l.msg_id), '{}') into v_locked
  from (
    select q.msg_id from pgmq.q_whatsapp_outbound q
    where q.msg_id = any(v_picked)
    for update skip locked
  ) l;

  with leased as (
    -- pgmq 1.5.1's columns: on a newer pgmq, last_read_at stays null (nothing here reads it).
    update pgmq.q_whatsapp_outbound m
    set vt = clock_timestamp() + make_interval(secs => least(greatest(p_vt, 0), 3600)),
        read_ct = m.read_ct + 1
    where m.msg_id = any(v_locked) and m.vt <= clock_timestamp()
    returning m.msg_id, (m.message ->> 'message_id')::uuid as message_id
  )
  select coalesce(array_agg(l.msg_id), '{}'), coalesce(array_agg(l.message_id), '{}')
  into v_msg_ids, v_message_ids
  from leased l;

  if cardinality(v_msg_ids) > 0 then
    return query select * from private.claim_outbound(
      v_msg_ids, v_message_ids, p_sessions, p_me, p_held, p_ttl);
  end if;
end
$$;

-- Expiry, on the database's clock: messages still queued `p_ttl` seconds after they were
-- written fail without an attempt, whoever holds (or nobody holds) their session. It looks at
-- the oldest jobs only (the queue's order is the order of writing), so it costs a window of
-- 200 whatever the backlog; jobs in flight are left to their holder, whose claim checks the TTL
-- too.
create function private.expire_outbound(p_ttl double precision) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_window bigint[];
  v_done bigint[];
  v_ids uuid[];
  v_msg_ids bigint[];
begin
  -- The oldest jobs by queue order, whether visible or not, so that the look costs the window
  -- and not what is in flight ahead of it; of those, the visible ones with nothing left to do
  -- are archived (or they would fill the window for good), and the expired ones fail, locked
  -- (a young one stays free for the take).
  select array_agg(w.msg_id) into v_window
  from (select q.msg_id from pgmq.q_whatsapp_outbound q order by q.msg_id limit 200) w;
  if v_window is null then
    return;
  end if;
  select array_agg(d.msg_id) into v_done
  from (
    select q.msg_id from pgmq.q_whatsapp_outbound q
    where q.msg_id = any(v_window) and q.vt <= clock_timestamp()
      and not exists (select 1 from public.messages m
                      where m.id = (q.message ->> 'message_id')::uuid
                        and m.status in ('pending', 'sending'))
    for update of q skip locked
  ) d;
  if v_done is not null then  -- the archive's delete and insert cost a third of a read
    perform private.archive_outbound(v_done);
  end if;
  select array_agg(m.id), array_agg(o.msg_id)
  into v_ids, v_msg_ids
  from (
    select x.msg_id, (x.message ->> 'message_id')::uuid as message_id
    from pgmq.q_whatsapp_outbound x
    where x.msg_id = any(v_window)
      and x.enqueued_at <= clock_timestamp() - make_interval(secs => p_ttl)
      and x.vt <= clock_timestamp()
    for update skip locked
  ) o
  join public.messages m on m.id = o.message_id
  where m.created_at <= now() - make_interval(secs => p_ttl) and m.status in ('pending', 'sending');
  if v_ids is not null then
    perform private.fail_outbound(
      v_ids, v_msg_ids,
      array_fill(format('expired: not sent within %s s (its WhatsApp session was not connected)',
                        p_ttl), array[cardinality(v_ids)]),
      false);
  end if;
end
$$;

-- The wake-up. pgmq's insert notification (pgmq.enable_notify_insert) must be throttled (NOTIFY
-- serialises the commits of every notifying transaction), so it costs either latency or
-- throughput. Instead an idle poller arms a flag, and the inserts that see it armed notify and
-- clear it: a busy poller costs the producers nothing, an idle one hears of the next message at
-- once.

create table private.outbound_listener (
  id boolean primary key default true check (id),
  armed boolean not null default false
);
comment on table private.outbound_listener is
  'One row: true while a poller waits for the next message (the next insert notifies).';
insert into private.outbound_listener default values;
alter table private.outbound_listener enable row level security;

create function private.wake_outbound_listener() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  -- Every insert that sees the flag armed notifies, also while another one's clearing is not
  -- committed yet: SKIP LOCKED, so that no insert waits behind a long transaction, and none
  -- depends on another that may still roll back.
  if exists (select 1 from private.outbound_listener l where l.armed) then
    update private.outbound_listener set armed = false
    where id in (select l.id from private.outbound_listener l where l.armed
                 for update skip locked);
    perform pg_notify('wa_outbound', '');
  end if;
  return null;
end
$$;

create trigger wake_outbound_listener after insert on pgmq.q_whatsapp_outbound
  for each statement execute function private.wake_outbound_listener();

-- Arms the flag, or returns false while a transaction that inserted into the queue is still
-- open. The SHARE lock (never waited for: NOWAIT) proves every earlier insert has committed, so
-- a read after this returns sees them, and every later insert sees the flag and notifies.
create function private.arm_outbound_listener() returns boolean
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  lock table pgmq.q_whatsapp_outbound in share mode nowait;
  update private.outbound_listener set armed = true where not armed;
  return true;
exception when lock_not_available then
  return false;
end
$$;

-- The lock above lasts until the caller's transaction ends, and holds back every send_message
-- meanwhile. The poller arms in autocommit; a poller connection left idle inside a transaction
-- (a bug) is ended after 10 s rather than stalling the senders.
alter role wa_poller set idle_in_transaction_session_timeout = '10s';

-- The transitions after a send. Each archives or re-times the job in the same transaction as
-- the message's status, so one commits only with the other.

-- Moves jobs to the archive table, as pgmq.archive does (the audit trail of jobs), but only
-- those with nothing left to do: their message row is gone or already final. A job whose
-- message still waits stays, whatever the caller passes.
create function private.archive_outbound(p_msg_ids bigint[]) returns setof bigint
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
  with moved as (
    delete from pgmq.q_whatsapp_outbound q
    where q.msg_id = any(p_msg_ids)
      and not exists (select 1 from public.messages m
                      where m.id = (q.message ->> 'message_id')::uuid
                        and m.status in ('pending', 'sending'))
    returning q.msg_id, q.read_ct, q.enqueued_at, q.vt, q.message, q.headers
  )
  insert into pgmq.a_whatsapp_outbound (msg_id, read_ct, enqueued_at, vt, message, headers)
  select m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers from moved m
  returning msg_id
$$;

-- Makes jobs invisible until `p_delay` seconds from now (0: visible at once). At most an hour:
-- no delay the poller uses is longer (its settings are capped alike), so no caller can hide a
-- job for longer than that.
create function private.retime_outbound(p_msg_ids bigint[], p_delay double precision)
returns setof bigint
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
  update pgmq.q_whatsapp_outbound q
  set vt = clock_timestamp() + make_interval(secs => least(greatest(p_delay, 0), 3600))
  where q.msg_id = any(p_msg_ids)
  returning q.msg_id
$$;

-- WhatsApp accepted the messages: `sent`, and their jobs archived.
create function private.outbound_sent(
  p_ids uuid[], p_msg_ids bigint[], p_wa_message_ids text[], p_sent_ats timestamptz[]
) returns setof bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  update public.messages m
  set status = 'sent', wa_message_id = s.wa_message_id, sent_at = s.sent_at,
      attempts = m.attempts + 1, error_log = null
  from unnest(p_ids, p_wa_message_ids, p_sent_ats) as s(id, wa_message_id, sent_at)
  where m.id = s.id and m.status in ('pending', 'sending');
  return query select private.archive_outbound(p_msg_ids);
end
$$;

-- A transient failure: back to `pending` with the error, the job invisible until the backoff
-- ends (the attempt is counted).
create function private.outbound_retry(
  p_id uuid, p_msg_id bigint, p_error text, p_delay double precision
) returns setof bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  update public.messages m
  set status = 'pending', error_log = p_error, attempts = m.attempts + 1
  where m.id = p_id and m.status in ('pending', 'sending');
  return query select private.retime_outbound(array[p_msg_id], p_delay);
end
$$;

-- `failed` with each message's error, and the jobs archived; `p_attempted`: a send was tried.
create function private.fail_outbound(
  p_ids uuid[], p_msg_ids bigint[], p_errors text[], p_attempted boolean
) returns setof bigint
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  update public.messages m
  set status = 'failed', error_log = f.error,
      attempts = m.attempts + case when p_attempted then 1 else 0 end
  from unnest(p_ids, p_errors) as f(id, error)
  where m.id = f.id and m.status in ('pending', 'sending');
  return query select private.archive_outbound(p_msg_ids);
end
$$;

-- A send that failed for good (the attempt is counted).
create function private.outbound_fail(p_ids uuid[], p_msg_ids bigint[], p_errors text[])
returns setof bigint
language sql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
  select private.fail_outbound(p_ids, p_msg_ids, p_errors, true)
$$;

-- Gives jobs back without counting an attempt (session down, a retry or a shutdown ahead of
-- them, another poller's): `pending` again, visible to any poller after `p_delay` seconds.
-- `p_ids` may be empty: the jobs only become visible again.
create function private.outbound_give_back(p_ids uuid[], p_msg_ids bigint[], p_delay double precision)
returns setof bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  update public.messages m
  set status = 'pending'
  where m.id = any(p_ids) and m.status = 'sending';
  return query select private.retime_outbound(p_msg_ids, p_delay);
end
$$;

-- Keeps jobs held in the poller's memory invisible to the others for `p_seconds` more.
create function private.outbound_extend(p_msg_ids bigint[], p_seconds double precision)
returns setof bigint
language sql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
  select private.retime_outbound(p_msg_ids, p_seconds)
$$;

