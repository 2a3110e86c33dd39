-- A send that failed for good (the attempt counts).
select private.outbound_fail(%(ids)s::uuid[], %(msg_ids)s::bigint[], %(errors)s::text[]) as msg_id
