-- Per-group FIFO read. read_grouped_rr only offers a group while its oldest message is
-- visible, so a later message never overtakes one that is in flight or waiting for a retry.
-- A statement of its own, committed before claim_messages runs: pgmq's function reads with a
-- newer snapshot than the statement around it, so joining the messages table here could miss
-- the row of a message committed in between.
select q.msg_id, (q.message ->> 'message_id')::uuid as message_id
from pgmq.read_grouped_rr('whatsapp_outbound', %(vt)s, %(qty)s) q
