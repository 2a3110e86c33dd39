-- Forward only: `sent` or `delivered` becomes `read` (a read implies delivery).
with r as (
  select * from unnest(%(wa_message_ids)s::text[], %(ats)s::timestamptz[]) as r(wa_message_id, at)
), found as (
  select m.id, m.wa_message_id, m.status, r.at
  from public.messages m join r on r.wa_message_id = m.wa_message_id
), moved as (
  update public.messages m
  set status = 'read', read_at = coalesce(m.read_at, f.at),
      delivered_at = coalesce(m.delivered_at, f.at)
  from found f
  where m.id = f.id and f.status in ('sent', 'delivered')
)
select wa_message_id from found
