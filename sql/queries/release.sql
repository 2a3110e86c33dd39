-- Give jobs back without counting an attempt: pending again, visible after `delay` seconds.
select private.outbound_give_back(%(ids)s::uuid[], %(msg_ids)s::bigint[],
                                  %(delay)s::double precision) as msg_id
