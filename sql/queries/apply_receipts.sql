-- Delivered or read receipts. Forward only: a message moves to `kind` only from a status before
-- it (read implies delivered; a read message never goes back to delivered). Returns the WhatsApp
-- ids found, so receipts that overtook their `sent` write can be tried again.
with r as (
  select * from unnest(%(wa_message_ids)s::text[], %(ats)s::timestamptz[]) as r(wa_message_id, at)
), found as (
  select m.id, m.wa_message_id, m.status, r.at
  from public.messages m join r on r.wa_message_id = m.wa_message_id
), moved as (
  update public.messages m
  set status = %(kind)s::public.message_status,
      delivered_at = coalesce(m.delivered_at, f.at),
      read_at = case when %(kind)s = 'read' then coalesce(m.read_at, f.at) else m.read_at end
  from found f
  where m.id = f.id
    and f.status in ('sent', 'delivered')
    and f.status < %(kind)s::public.message_status
)
select wa_message_id from found
