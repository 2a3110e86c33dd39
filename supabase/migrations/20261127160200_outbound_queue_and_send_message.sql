-- The outbound queue and the RPC that writes a message and enqueues it in one transaction.

-- The queue (pgmq is there and new enough: see 20261127160000_schema.sql).
do $$
begin
  if not exists (select 1 from pgmq.meta where queue_name = 'whatsapp_outbound') then
    perform pgmq.create('whatsapp_outbound');
  end if;
end
$$;

-- End users never touch the queue: only send_message (SECURITY DEFINER) writes to it.
revoke all on schema pgmq from public, anon, authenticated;
revoke all on all functions in schema pgmq from public, anon, authenticated;
revoke all on all tables in schema pgmq from public, anon, authenticated;
revoke all on all sequences in schema pgmq from public, anon, authenticated;

-- Limits on what one person can queue, so that a script or a stuck key cannot flood a group:
-- one row, admins edit it (null = no limit). The defaults are far above what a person types;
-- automations and benchmarks raise them (see the README).
create table public.send_limits (
  id boolean primary key default true constraint send_limits_one_row check (id),
  sender_per_minute integer default 60 constraint send_limits_sender_per_minute_positive
    check (sender_per_minute > 0),
  group_pending integer default 1000 constraint send_limits_group_pending_positive
    check (group_pending > 0),
  updated_at timestamptz not null default now()
);
comment on table public.send_limits is
  'send_message quotas: messages per sender per minute, and messages waiting per group (null: no limit).';
insert into public.send_limits default values;
alter table public.send_limits enable row level security;
create policy "Admins can read send limits" on public.send_limits
  for select to authenticated using ((select private.is_admin()));
create policy "Admins can update send limits" on public.send_limits
  for update to authenticated using ((select private.is_admin())) with check ((select private.is_admin()));
revoke all on public.send_limits from anon, authenticated;
grant select, update (sender_per_minute, group_pending) on public.send_limits to authenticated;
create trigger send_limits_touch before update on public.send_limits
  for each row execute function private.touch_updated_at();

-- Input quoted back in an error: short, so a huge argument never fills a response or the log.
create function private.echo(p_value text) returns text
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case when pg_catalog.char_length(p_value) > 80
              then pg_catalog.left(p_value, 79) || '…' else coalesce(p_value, 'null') end
$$;

-- The body runs as its owner (it inserts into messages and the queue, which callers cannot)
-- in `private`, which the API does not expose; public.send_message is the thin RPC entry.
-- The checks run cheapest first, and a caller who may not see a group learns nothing about it.
create function private.send_message(p_group_jid text, p_content text, p_client_msg_id uuid)
returns public.messages
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_uid uuid := auth.uid();
  v_admin boolean := coalesce(auth.jwt() -> 'app_metadata' ->> 'role', '') = 'admin';
  v_email varchar;
  v_group public.whatsapp_groups;
  v_limits public.send_limits;
  v_since timestamptz;
  v_msg public.messages;
begin
  if v_uid is null then
    raise exception 'not authenticated'
      using errcode = '42501', hint = 'Sign in before sending messages.';
  end if;
  if char_length(p_group_jid) > 64 then
    raise exception 'group_jid is too long: % characters (at most 64)', char_length(p_group_jid)
      using errcode = '22001', hint = 'A group JID looks like 120363025246125888@g.us.';
  end if;
  if p_group_jid is null or p_group_jid !~ '^[0-9]+(-[0-9]+)?@g\.us$' then
    raise exception 'invalid group_jid: %', private.echo(p_group_jid)
      using errcode = '22023', hint = 'A group JID looks like 120363025246125888@g.us.';
  end if;
  if private.is_blank(p_content) then
    raise exception 'content is empty'
      using errcode = '22004', hint = 'Type a message before sending.';
  end if;
  if char_length(p_content) > 65536 then
    raise exception 'content is too long: % characters (at most 65536)', char_length(p_content)
      using errcode = '22001', hint = 'Length counts Unicode code points.';
  end if;

  -- A retry with the same key gets the row it made before, whatever happened to the group or
  -- the quotas since.
  if p_client_msg_id is not null then
    select * into v_msg from public.messages m
    where m.sender_id = v_uid and m.client_msg_id = p_client_msg_id;
    if found then
      return private.same_request_or_raise(v_msg, p_group_jid, p_content);
    end if;
  end if;

  -- A JWT outlives its user by up to its expiry: a deleted account sends nothing.
  select u.email into v_email from auth.users u where u.id = v_uid;
  if not found then
    raise exception 'not authenticated: the user no longer exists'
      using errcode = '42501', hint = 'Sign in again.';
  end if;

  -- Not select *: participants can be a large jsonb, and only the flags matter here. KEY SHARE:
  -- the group cannot be deleted (or re-keyed) until this message is committed.
  select g.is_active, g.is_readonly, g.readonly_reason
  into v_group.is_active, v_group.is_readonly, v_group.readonly_reason
  from public.whatsapp_groups g where g.jid = p_group_jid
  for key share;
  if not found and v_admin then
    raise exception 'unknown group: %', p_group_jid
      using errcode = 'PT404', hint = 'The group has not been synced from WhatsApp.';
  end if;
  -- Inline rather than through the RLS helpers: this plan is cached, a SQL helper's is not.
  if not v_admin and (not found or not exists (
       select 1
       from public.group_assignments ga
       join public.employee_group_members m on m.employee_group_id = ga.employee_group_id
       where ga.group_jid = p_group_jid and m.user_id = v_uid)) then
    raise exception 'group % is not assigned to any of your teams', p_group_jid
      using errcode = 'PT403', hint = 'Ask an admin to assign the group to your team.';
  end if;
  if not v_group.is_active then
    raise exception 'group % is inactive', p_group_jid
      using errcode = 'PT410', hint = 'The WhatsApp account is no longer in this group.';
  end if;
  if v_group.is_readonly then
    raise exception 'group % is read-only: %', p_group_jid, v_group.readonly_reason
      using errcode = 'PT409', hint = 'The WhatsApp account cannot post in this group.';
  end if;

  -- Quotas. Each count stops at the limit, so a check costs at most `limit` index entries.
  select * into v_limits from public.send_limits;
  if v_limits.sender_per_minute is not null then
    -- The oldest of the sender's last `limit` messages within the minute: when it leaves the
    -- window there is room again.
    select m.created_at into v_since
    from public.messages m
    where m.sender_id = v_uid and m.created_at > now() - interval '1 minute'
    order by m.created_at desc
    offset v_limits.sender_per_minute - 1 limit 1;
    if found then
      raise exception 'too many messages: at most % a minute per sender', v_limits.sender_per_minute
        using errcode = 'PT429',
              hint = format('Retry in %s s.',
                            greatest(1, ceil(extract(epoch from v_since + interval '1 minute' - now())))::int);
    end if;
  end if;
  if v_limits.group_pending is not null and (
       select count(*) from (
         select 1 from public.messages m
         where m.group_jid = p_group_jid and m.status in ('pending', 'sending')
         limit v_limits.group_pending) w) >= v_limits.group_pending then
    raise exception 'group % has % messages waiting to be sent (at most %)',
                    p_group_jid, v_limits.group_pending, v_limits.group_pending
      using errcode = 'PT429', hint = 'Retry once some of them have been sent.';
  end if;

  insert into public.messages (group_jid, sender_id, sender_email, content, client_msg_id)
  values (p_group_jid, v_uid, v_email, p_content, p_client_msg_id)
  on conflict (sender_id, client_msg_id) where client_msg_id is not null do nothing
  returning * into v_msg;

  if not found then
    -- A concurrent call with the same key inserted first; it has committed by now.
    select * into v_msg from public.messages m
    where m.sender_id = v_uid and m.client_msg_id = p_client_msg_id;
    return private.same_request_or_raise(v_msg, p_group_jid, p_content);
  end if;

  -- The row pgmq.send('whatsapp_outbound', msg, headers) would write, visible at once (pgmq
  -- 1.5.1's columns). pgmq.send builds its INSERT with dynamic SQL on every call; this static
  -- one keeps a cached plan and halves the cost of enqueueing (bench/).
  -- tests/test_send_message.py pins the table's shape.
  insert into pgmq.q_whatsapp_outbound (vt, message, headers)
  values (clock_timestamp(),
          jsonb_build_object('message_id', v_msg.id),
          jsonb_build_object('x-pgmq-group', p_group_jid));
  return v_msg;
end
$$;

-- Reusing a key for a different message is a client bug: say so rather than drop the message.
create function private.same_request_or_raise(p_msg public.messages, p_group_jid text, p_content text)
returns public.messages
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_msg.group_jid is distinct from p_group_jid or p_msg.content is distinct from p_content then
    raise exception 'client_msg_id % was already used for a different message', p_msg.client_msg_id
      using errcode = 'PT422', hint = 'Use a new client_msg_id for each new message.';
  end if;
  return p_msg;
end
$$;

-- plpgsql, not sql: a non-inlined SQL function is planned again on every call.
create function public.send_message(group_jid text, content text, client_msg_id uuid default null)
returns public.messages
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  return private.send_message(group_jid, content, client_msg_id);
end
$$;
comment on function public.send_message(text, text, uuid) is
  'Queue a WhatsApp message to a group the caller may post to. Returns the messages row (status pending).';

revoke execute on function public.send_message(text, text, uuid) from public, anon;
grant usage on schema private to service_role;
grant execute on function public.send_message(text, text, uuid) to authenticated, service_role;
