select private.outbound_extend(%(msg_ids)s::bigint[], %(seconds)s::double precision) as msg_id
