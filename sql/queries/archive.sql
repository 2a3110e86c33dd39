-- A queue message with nothing left to do (its row is gone or already final).
select pgmq.archive('whatsapp_outbound', %(msg_ids)s::bigint[]) as msg_id
