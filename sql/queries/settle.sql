-- The outcomes of a batch of sends, in one statement (one transaction): each transition runs
-- only when the batch has outcomes of its kind (an untaken CASE branch runs no subquery). Also
-- when each sent message was written, for the enqueue → sent metric.
select
  (select coalesce(jsonb_object_agg(m.id, m.created_at), '{}') from public.messages m
   where m.id = any(%(sent_ids)s::uuid[])) as sent_created_ats,
  case when cardinality(%(sent_ids)s::uuid[]) > 0 then
    (select count(*) from private.outbound_sent(
       %(sent_ids)s::uuid[], %(sent_msg_ids)s::bigint[], %(wa_message_ids)s::text[],
       %(sent_ats)s::timestamptz[]))
  else 0 end as archived,
  case when cardinality(%(retry_ids)s::uuid[]) > 0 then
    (select count(*) from private.outbound_retry(
       %(retry_ids)s::uuid[], %(retry_msg_ids)s::bigint[], %(retry_errors)s::text[],
       %(retry_delays)s::double precision[]))
  else 0 end as retried,
  case when cardinality(%(failed_ids)s::uuid[]) > 0 then
    (select count(*) from private.outbound_fail(
       %(failed_ids)s::uuid[], %(failed_msg_ids)s::bigint[], %(failed_errors)s::text[]))
  else 0 end as failed,
  case when cardinality(%(back_ids)s::uuid[]) > 0 then
    (select count(*) from private.outbound_give_back(
       %(back_ids)s::uuid[], %(back_msg_ids)s::bigint[], %(back_delays)s::double precision[]))
  else 0 end as given_back
