-- Ticks through Realtime Broadcast: the database broadcasts each change a message's ticks show,
-- on a private topic per group, `group:<jid>`, with a slim payload and never the content.
--
-- Events (both with the same payload, built by private.broadcast_ticks):
-- * `message_status`: a message's status changed. Exactly one per change, whoever writes it
--   (the poller's functions, an admin in Studio). The creation is not broadcast: the sender has
--   the row from send_message, and a broadcast there would cost a third of send_message's
--   throughput (bench/send_message_throughput.py); the others see the message at `sending`.
-- * `message_receipts`: its delivered or read count in the group changed. At most one per
--   message per statement, however many receipts the statement recorded, and none when a
--   statement changes no count (a receipt seen twice).
-- A receipt that also moves the status (the first `delivered`, the first `read`) yields one of
-- each: they carry the same counts.
--
-- Payload: {message_id, group_jid, status, created_at, sent_at, delivered_at, read_at,
-- delivered, read, participants} where `delivered` and `read` count the participants'
-- receipts (a read counts as delivered) and `participants` is the size of the group's
-- participant list as group sync stored it (the session's own account included). Timestamps
-- are ISO 8601 in UTC. realtime.send adds an `id` of the broadcast itself.
--
-- Who may listen: see the policies on realtime.messages below. postgres_changes on
-- public.messages (the `supabase_realtime` publication) stays, as the simple path.

-- The last counts broadcast for each message, so that one statement (an INSERT ... ON CONFLICT
-- DO UPDATE fires both its UPDATE and its INSERT statement triggers) broadcasts a message once,
-- and a statement that changes no count broadcasts nothing. Its row lock also orders two
-- transactions recording receipts of the same message: counts never go backwards on the wire.
create table private.message_receipt_counts (
  message_id uuid primary key references public.messages (id) on delete cascade,
  delivered integer not null default 0,
  read integer not null default 0
);
alter table private.message_receipt_counts enable row level security;
revoke all on private.message_receipt_counts from public;

-- The delivered and read counts of messages in their group (a read counts as delivered too).
create function private.receipt_counts(p_ids uuid[])
returns table (message_id uuid, delivered integer, read integer)
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select r.message_id,
         pg_catalog.count(*) filter (where r.delivered_at is not null or r.read_at is not null)::integer,
         pg_catalog.count(*) filter (where r.read_at is not null)::integer
  from public.message_receipts r
  where r.message_id = any (p_ids)
  group by r.message_id
$$;

-- Sends one tick per message of `p_ids`, as realtime.send would (a row in realtime.messages on
-- the private topic `group:<jid>`, extension `broadcast`, the payload carrying its own `id`),
-- but in one INSERT for the whole statement that changed them: realtime.send catches errors per
-- call, which costs a subtransaction (and a transaction id) per message, and a poller's claim
-- changes 200 messages at once. Like realtime.send, a failure to broadcast is only a warning:
-- a tick must never undo a status. Payload: {message_id, group_jid, status, created_at,
-- sent_at, delivered_at, read_at, delivered, read, participants, id}; UTC timestamps.
create function private.broadcast_ticks(p_event text, p_ids uuid[]) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
as $$
begin
  insert into realtime.messages (id, topic, extension, event, payload, private)
  select t.id, 'group:' || t.group_jid, 'broadcast', p_event,
         t.tick || pg_catalog.jsonb_build_object('id', t.id), true
  from (
    -- Not flattened (a volatile target): one id per message, in the row and its payload.
    select pg_catalog.gen_random_uuid() as id, m.group_jid::text as group_jid,
           pg_catalog.jsonb_build_object(
             'message_id', m.id,
             'group_jid', m.group_jid,
             'status', m.status,
             'created_at', m.created_at,
             'sent_at', m.sent_at,
             'delivered_at', m.delivered_at,
             'read_at', m.read_at,
             'delivered', coalesce(c.delivered, 0),
             'read', coalesce(c.read, 0),
             'participants', coalesce(g.participants, 0)) as tick
    from public.messages m
    -- Each group's participant list is read once per statement, not once per message.
    left join (
      select w.jid,
             case when pg_catalog.jsonb_typeof(w.participants) = 'array'
                  then pg_catalog.jsonb_array_length(w.participants) else 0 end as participants
      from public.whatsapp_groups w
      where w.jid in (select x.group_jid from public.messages x where x.id = any (p_ids))
    ) g on g.jid = m.group_jid
    left join private.receipt_counts(p_ids) c on c.message_id = m.id
    where m.id = any (p_ids)
    order by m.id
  ) t;
exception when others then
  raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
end
$$;

-- SECURITY DEFINER: the writers (wa_poller, the poller's functions) have no right on
-- realtime.messages. A statement trigger (transition tables cannot go with a column list, so it
-- compares the old and new status itself): one INSERT however many messages changed.
create function private.broadcast_status_changes() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ids uuid[];
begin
  select pg_catalog.array_agg(n.id) into v_ids
  from changed_new n join changed_old o on o.id = n.id
  where o.status is distinct from n.status;
  if v_ids is not null then
    perform private.broadcast_ticks('message_status', v_ids);
  end if;
  return null;
end
$$;

create trigger messages_broadcast_status after update on public.messages
  referencing old table as changed_old new table as changed_new
  for each statement execute function private.broadcast_status_changes();

-- One broadcast per message whose counts this statement changed. The statement's messages are
-- locked in id order (no deadlock between two writers), then counted afresh: in READ
-- COMMITTED the count after the lock sees every receipt committed before it.
create function private.broadcast_receipt_counts() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ids uuid[];
  v_moved uuid[];
begin
  select pg_catalog.array_agg(distinct t.message_id order by t.message_id) into v_ids
  from changed_receipts t;
  if v_ids is null then
    return null;
  end if;

  insert into private.message_receipt_counts as c (message_id)
  select i from pg_catalog.unnest(v_ids) as i
  order by i
  on conflict (message_id) do nothing;
  perform 1 from private.message_receipt_counts c
  where c.message_id = any (v_ids) order by c.message_id for update;

  with moved as (
    update private.message_receipt_counts c
    set delivered = n.delivered, read = n.read
    from private.receipt_counts(v_ids) n
    where c.message_id = n.message_id
      and (c.delivered, c.read) is distinct from (n.delivered, n.read)
    returning c.message_id
  )
  select pg_catalog.array_agg(moved.message_id) into v_moved from moved;
  if v_moved is not null then
    perform private.broadcast_ticks('message_receipts', v_moved);
  end if;
  return null;
end
$$;

create trigger message_receipts_broadcast_insert after insert on public.message_receipts
  referencing new table as changed_receipts
  for each statement execute function private.broadcast_receipt_counts();
create trigger message_receipts_broadcast_update after update on public.message_receipts
  referencing new table as changed_receipts
  for each statement execute function private.broadcast_receipt_counts();

-- Who may listen. Realtime tries these policies when a client joins a private channel: as the
-- client's role and claims, with `realtime.topic` set, it must be able to read back a row it
-- inserted for the topic. On `group:<jid>` topics: members of the teams the group is assigned
-- to, and admins (every group there is). One policy for each action, for `authenticated` only (anon:
-- nothing; service_role bypasses RLS, as everywhere on Supabase).
create policy "Members and admins can receive broadcasts of their groups"
  on realtime.messages
  for select to authenticated
  using (
    extension = 'broadcast'
    and topic like 'group:%'
    and (pg_catalog.substr(topic, 7) in (select private.my_group_jids())
         or ((select private.is_admin())
             and exists (select 1 from public.whatsapp_groups g
                         where g.jid = pg_catalog.substr(topic, 7))))
  );

-- Nobody sends on group topics from a client: only these triggers do (as the table's
-- privileged writer). RESTRICTIVE, so that a permissive INSERT policy added later for other
-- topics cannot open these.
create policy "Nobody can send on group topics from a client"
  on realtime.messages
  as restrictive
  for insert to anon, authenticated
  with check (topic not like 'group:%');
