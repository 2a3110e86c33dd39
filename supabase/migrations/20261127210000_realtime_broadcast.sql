-- Ticks through Realtime Broadcast: the database broadcasts each change a message's ticks show,
-- on a private topic per group, `group:<jid>`, with a slim payload and never the content.
--
-- Events (both with the same payload, built by private.message_tick):
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

-- The payload of a tick for message `m`. UTC, so that every writer's session gives the same text.
create function private.message_tick(m public.messages) returns jsonb
language sql stable
set search_path = pg_catalog, pg_temp
set timezone = 'UTC'
as $$
  select pg_catalog.jsonb_build_object(
    'message_id', m.id,
    'group_jid', m.group_jid,
    'status', m.status,
    'created_at', m.created_at,
    'sent_at', m.sent_at,
    'delivered_at', m.delivered_at,
    'read_at', m.read_at,
    'delivered', c.delivered,
    'read', c.read,
    'participants', (
      select case when pg_catalog.jsonb_typeof(g.participants) = 'array'
                  then pg_catalog.jsonb_array_length(g.participants) else 0 end
      from public.whatsapp_groups g where g.jid = m.group_jid))
  from (
    select pg_catalog.count(*) filter (where r.delivered_at is not null or r.read_at is not null)
             as delivered,
           pg_catalog.count(*) filter (where r.read_at is not null) as read
    from public.message_receipts r
    where r.message_id = m.id
  ) c
$$;

-- SECURITY DEFINER: the writers (wa_poller, the RPC's owner) have no right on realtime.messages,
-- and realtime.send, which runs as its caller, would only WARN and send nothing.
create function private.broadcast_message_status() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform realtime.send(
    private.message_tick(new), 'message_status', 'group:' || new.group_jid::text, true);
  return null;
end
$$;

create trigger messages_broadcast_status after update of status on public.messages
  for each row when (old.status is distinct from new.status)
  execute function private.broadcast_message_status();

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
  v_message public.messages;
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

  for v_message in
    with counted as (
      select r.message_id,
             pg_catalog.count(*) filter (where r.delivered_at is not null or r.read_at is not null)
               as delivered,
             pg_catalog.count(*) filter (where r.read_at is not null) as read
      from public.message_receipts r
      where r.message_id = any (v_ids)
      group by r.message_id
    ), moved as (
      update private.message_receipt_counts c
      set delivered = n.delivered, read = n.read
      from counted n
      where c.message_id = n.message_id
        and (c.delivered, c.read) is distinct from (n.delivered::integer, n.read::integer)
      returning c.message_id
    )
    select m.* from public.messages m join moved on moved.message_id = m.id
    order by m.id
  loop
    perform realtime.send(
      private.message_tick(v_message), 'message_receipts',
      'group:' || v_message.group_jid::text, true);
  end loop;
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
