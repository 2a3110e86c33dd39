-- Jobs whose message is gone or already final: archived (the database checks which).
select private.outbound_discard(%(msg_ids)s::bigint[]) as msg_id
