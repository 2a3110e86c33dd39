-- Retry receipts: a participant could not decrypt a message and asked for it again. Counted
-- per message and participant (the status does not move). Returns the WhatsApp ids found, so
-- receipts that overtook their `sent` write can be tried again.
with r as (
  select *
  from unnest(%(wa_message_ids)s::text[], %(ats)s::timestamptz[], %(participants)s::text[])
    as r(wa_message_id, at, participant)
), found as (
  select m.id, m.wa_message_id, r.at, r.participant
  from public.messages m join r on r.wa_message_id = m.wa_message_id
), counted as (
  insert into public.message_receipts as mr (message_id, participant, retry_count, last_retry_at)
  select id, participant, count(*), max(at)
  from found where participant is not null
  group by id, participant
  order by id, participant
  on conflict (message_id, participant) do update
  set retry_count = mr.retry_count + excluded.retry_count,
      last_retry_at = greatest(mr.last_retry_at, excluded.last_retry_at)
)
select distinct wa_message_id from found
