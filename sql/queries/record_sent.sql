-- WhatsApp accepted them: `sent`, and their jobs archived in the same transaction.
select private.outbound_sent(%(ids)s::uuid[], %(msg_ids)s::bigint[], %(wa_message_ids)s::text[],
                             %(sent_ats)s::timestamptz[]) as msg_id
