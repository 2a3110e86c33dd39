-- Delivered or read receipts. Forward only: a message moves to `kind` only from a status before
-- it (read implies delivered; a read message never goes back to delivered). In groups each
-- participant's receipt is kept too ("delivered to N of M"). Returns the WhatsApp ids found, so
-- receipts that overtook their `sent` write can be tried again, with when the message was sent
-- and when the receipt came (the receipt lag's metric).
with r as (
  select *
  from unnest(%(wa_message_ids)s::text[], %(ats)s::timestamptz[], %(participants)s::text[])
    as r(wa_message_id, at, participant)
), found as (
  select m.id, m.wa_message_id, m.status, m.sent_at, r.at, r.participant
  from public.messages m join r on r.wa_message_id = m.wa_message_id
), moved as (
  update public.messages m
  set status = %(kind)s::public.message_status,
      delivered_at = coalesce(m.delivered_at, f.at),
      read_at = case when %(kind)s = 'read' then coalesce(m.read_at, f.at) else m.read_at end
  from found f
  where m.id = f.id
    -- m.status, not f.status: re-checked against the newest row if another writer got there
    and m.status in ('sent', 'delivered')
    and m.status < %(kind)s::public.message_status
), per_participant as (
  insert into public.message_receipts as mr (message_id, participant, delivered_at, read_at)
  select distinct on (id, participant) id, participant, at,
         case when %(kind)s = 'read' then at end
  from found where participant is not null
  order by id, participant, at
  on conflict (message_id, participant) do update
  set delivered_at = coalesce(mr.delivered_at, excluded.delivered_at),
      read_at = coalesce(mr.read_at, excluded.read_at)
)
select wa_message_id, sent_at, at from found
