-- How many sessions this poller should hold: its share among the pollers alive now.
select ceil((select count(*) from public.whatsapp_sessions)::numeric
            / greatest(1, (select count(*) from private.pollers
                           where heartbeat_at > now() - make_interval(secs => %(ttl)s))))::int
       as share
