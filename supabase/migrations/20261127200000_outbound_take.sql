-- The outbound queue's transitions, one function each (take, sent, retry, fail, expire, give
-- back, extend, discard), and the wake-up. They are the poller's only access to the queue: each
-- is SECURITY DEFINER and written on pgmq 1.5.1's columns of the queue table (msg_id, read_ct,
-- enqueued_at, vt, message, headers), so they work from pgmq 1.5.1 to the newest. The read is one
-- round trip with plans cached by plpgsql (pgmq's read functions plan their SQL at every call),
-- and the wake-up costs the producers nothing while the poller is busy.

-- A queue message read, with what sending it needs and whether it was claimed.
create type private.outbound_claim as (
  msg_id bigint, message_id uuid, group_jid text, content text, status text, attempts integer,
  created_at timestamptz, session_id uuid, is_active boolean, is_readonly boolean,
  readonly_reason text, held_elsewhere boolean, behind boolean, claimed boolean
);

-- Loads what sending needs for a batch of queue messages and marks `sending` the messages that
-- can go now: their session is held by the calling poller and connected, the group is open,
-- they have not expired, and no earlier message of their group is queued outside what the
-- caller holds (`p_held`) or this batch.
-- `held_elsewhere`: the session is held by another live poller, which will send it.
-- `behind`: an earlier message of the group is still queued elsewhere; it must go first.
create function private.claim_outbound(
  p_msg_ids bigint[],
  p_message_ids uuid[],
  p_sessions uuid[],
  p_me text,
  p_held bigint[],
  p_ttl double precision
) returns setof private.outbound_claim
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_groups text[];
  v_earliest bigint[];
begin
  -- The earliest message of each of the batch's groups that is neither in the batch nor held
  -- by the caller. Planned at each call (EXECUTE), so that the two arrays are constants the
  -- planner can hash: a cached plan would compare every queue row with every held message.
  execute $query$
    select coalesce(array_agg(e.group_jid), '{}'), coalesce(array_agg(e.msg_id), '{}')
    from (
      select q.headers ->> 'x-pgmq-group' as group_jid, min(q.msg_id) as msg_id
      from pgmq.q_whatsapp_outbound q
      where q.headers ->> 'x-pgmq-group' in (
              select b.headers ->> 'x-pgmq-group' from pgmq.q_whatsapp_outbound b
              where b.msg_id = any($1))
        and q.msg_id <> all($1)
        and q.msg_id <> all($2)
      group by 1
    ) e
  $query$
  into v_groups, v_earliest
  using p_msg_ids, p_held;

  return query
  with batch as (
    select * from unnest(p_msg_ids, p_message_ids) as b(msg_id, message_id)
  ), found as (
    select b.msg_id, b.message_id, m.group_jid::text, m.content::text, m.status::text as status,
           m.attempts::integer,
           m.created_at, g.session_id, g.is_active, g.is_readonly, g.readonly_reason::text,
           coalesce(s.lease_owner <> p_me and s.lease_expires_at > now(), false) as held_elsewhere
    from batch b
    left join public.messages m on m.id = b.message_id
    left join public.whatsapp_groups g on g.jid = m.group_jid
    left join public.whatsapp_sessions s on s.id = g.session_id
  ), checked as (
    select f.*, coalesce(e.msg_id < f.msg_id, false) as behind
    from found f
    left join unnest(v_groups, v_earliest) as e(group_jid, msg_id) on e.group_jid = f.group_jid
  ), claimed as (
    update public.messages m
    set status = 'sending'
    from checked f
    where m.id = f.message_id
      and f.status in ('pending', 'sending')
      and f.session_id = any(p_sessions)
      and not f.held_elsewhere and not f.behind
      and f.is_active and not f.is_readonly
      and f.created_at > now() - make_interval(secs => p_ttl)
    returning m.id
  )
  select f.msg_id, f.message_id, f.group_jid, f.content, f.status, f.attempts, f.created_at,
         f.session_id, f.is_active, f.is_readonly, f.readonly_reason, f.held_elsewhere, f.behind,
         f.message_id in (select c.id from claimed c)
  from checked f
  order by f.msg_id;
end
$$;

-- Per-group FIFO read, then the claim. The read keeps read_grouped_rr's rule (a group is offered
-- only while its oldest message is visible; round robin across groups, then in order within
-- each) and skips the groups whose session another live poller holds, so pollers do not read
-- and hand back each other's messages. It takes no more of a session's messages than the
-- caller has room for (`p_rooms`, aligned with `p_sessions`), so none is read only to be handed
-- back. Unlike read_grouped_rr it takes no advisory lock per group: the planner would take one
-- for every group in the queue (filling the lock table with a large backlog) and a concurrent
-- read would make it skip groups it should offer. Two reads of one group at once are rare (each
-- session has one poller) and safe: SKIP LOCKED and the claim's `behind` check hand back
-- anything that would overtake an earlier message.
-- The claim is a statement of its own: it takes a newer snapshot, which sees the message row of
-- every queue row the read took (they commit together).
create function private.take_outbound(
  p_me text,
  p_sessions uuid[],
  p_rooms integer[],
  p_held bigint[],
  p_vt integer,
  p_qty integer,
  p_ttl double precision
) returns setof private.outbound_claim
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_picked bigint[];
  v_locked bigint[];
  v_msg_ids bigint[];
  v_message_ids uuid[];
begin
  -- Each statement scans the queue at most once whatever its plan: the plans are cached, and
  -- one made while the queue was small must not turn into nested loops over a large backlog.
  select coalesce(array_agg(p.msg_id order by p.rank_in_group, p.head_msg_id), '{}')
  into v_picked
  from (
    select c.msg_id, c.rank_in_group, c.head_msg_id
    from (
      select v.msg_id, v.rank_in_group, v.head_msg_id, v.room,
             row_number() over (partition by v.session_id
                                order by v.rank_in_group, v.head_msg_id) as rank_in_session
      from (
        select g.msg_id, g.head_msg_id, gr.session_id, r.room,
               row_number() over (partition by g.group_jid order by g.msg_id) as rank_in_group
        from (
          select q.msg_id, q.vt, q.headers ->> 'x-pgmq-group' as group_jid,
                 first_value(q.vt) over w as head_vt,
                 first_value(q.msg_id) over w as head_msg_id
          from pgmq.q_whatsapp_outbound q
          window w as (partition by q.headers ->> 'x-pgmq-group' order by q.msg_id)
        ) g
        left join public.whatsapp_groups gr on gr.jid = g.group_jid
        left join public.whatsapp_sessions s on s.id = gr.session_id
        left join unnest(p_sessions, p_rooms) as r(session_id, room)
          on r.session_id = gr.session_id
        where g.head_vt <= clock_timestamp()
          and g.vt <= clock_timestamp()
          and not coalesce(s.lease_owner <> p_me and s.lease_expires_at > now(), false)
      ) v
      where v.rank_in_group <= p_qty  -- no group can give more than a batch
    ) c
    -- Messages of sessions not sending here (down, or no session) are read without a cap:
    -- the poller parks them or fails them.
    where c.room is null or c.rank_in_session <= c.room
    order by c.rank_in_group, c.head_msg_id
    limit p_qty
  ) p;

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

-- Messages that will not be sent, failed without a send being tried (expired, or their group
-- closed): no attempt counted.
create function private.outbound_expire(p_ids uuid[], p_msg_ids bigint[], p_errors text[])
returns setof bigint
language sql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
  select private.fail_outbound(p_ids, p_msg_ids, p_errors, false)
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

-- Archives the jobs with nothing left to do (see archive_outbound).
create function private.outbound_discard(p_msg_ids bigint[]) returns setof bigint
language sql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
  select private.archive_outbound(p_msg_ids)
$$;
