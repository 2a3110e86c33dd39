-- Status and archive in one statement, so one commits only with the other.
with sent as (
  update public.messages m
  set status = 'sent', wa_message_id = s.wa_message_id, sent_at = s.sent_at,
      attempts = m.attempts + 1, error_log = null
  from unnest(%(ids)s::uuid[], %(wa_message_ids)s::text[], %(sent_ats)s::timestamptz[])
    as s(id, wa_message_id, sent_at)
  where m.id = s.id and m.status in ('pending', 'sending')
  returning m.id
)
select pgmq.archive('whatsapp_outbound', %(msg_ids)s::bigint[]) as msg_id
