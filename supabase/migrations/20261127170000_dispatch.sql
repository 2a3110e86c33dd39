-- What the poller's dispatch relies on: statuses that only move forward whatever writes them.
-- (Its wake-up on enqueue is in 20261127200000_outbound_take.sql.)

-- pending → sending → sent → delivered → read, and pending/sending → failed. The one step back
-- allowed is sending → pending: a send that was not attempted or will be retried.
create function private.enforce_status_order() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  rank_old int := array_position(array['pending', 'sending', 'sent', 'delivered', 'read'], old.status::text);
  rank_new int := array_position(array['pending', 'sending', 'sent', 'delivered', 'read'], new.status::text);
begin
  if new.status = old.status
     or (old.status = 'sending' and new.status = 'pending')
     or (new.status = 'failed' and old.status in ('pending', 'sending'))
     or (old.status <> 'failed' and new.status <> 'failed' and rank_new > rank_old) then
    return new;
  end if;
  raise exception 'message % cannot go from % to %', old.id, old.status, new.status
    using errcode = '23514', hint = 'Statuses only move forward.';
end
$$;

create trigger messages_status_order before update of status on public.messages
  for each row execute function private.enforce_status_order();
