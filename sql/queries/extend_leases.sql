select msg_id
from pgmq.set_vt('whatsapp_outbound', %(msg_ids)s::bigint[],
                 clock_timestamp() + make_interval(secs => %(seconds)s))
