-- Forward only: `sent` becomes `delivered`; a read message stays read.
with r as (
  select * from unnest(%(wa_message_ids)s::text[], %(ats)s::timestamptz[]) as r(wa_message_id, at)
), found as (
  select m.id, m.wa_message_id, m.status, r.at
  from public.messages m join r on r.wa_message_id = m.wa_message_id
), moved as (
  update public.messages m
  set status = 'delivered', delivered_at = coalesce(m.delivered_at, f.at)
  from found f
  where m.id = f.id and f.status = 'sent'
)
select wa_message_id from found
