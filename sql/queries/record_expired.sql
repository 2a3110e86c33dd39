-- Messages that will not be sent, failed without a send (expired, or their group closed).
select private.outbound_expire(%(ids)s::uuid[], %(msg_ids)s::bigint[], %(errors)s::text[]) as msg_id
