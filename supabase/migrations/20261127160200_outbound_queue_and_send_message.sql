-- The outbound queue and the RPC that writes a message and enqueues it in one transaction.

-- pgmq: the extension on Supabase; on plain PostgreSQL `wa-poller db bootstrap` has already
-- installed pgmq's SQL-only form, so the extension is only created when pgmq is absent.
do $$
begin
  if to_regclass('pgmq.meta') is null then
    create extension if not exists pgmq;
  end if;
  -- Message headers (the per-group key) and the grouped reads came with pgmq 1.8; an older
  -- extension (some hosted images) must be upgraded first.
  if to_regprocedure('pgmq.read_grouped_rr(text, integer, integer)') is null then
    raise exception 'pgmq is too old: this project needs pgmq 1.8 or newer (headers and grouped reads)'
      using errcode = '0A000',
            hint = 'Upgrade the pgmq extension (alter extension pgmq update), or run wa-poller db bootstrap on a database without it.';
  end if;
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

-- The body runs as its owner (it inserts into messages and the queue, which callers cannot)
-- in `private`, which the API does not expose; public.send_message is the thin RPC entry.
create function private.send_message(p_group_jid text, p_content text, p_client_msg_id uuid)
returns public.messages
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_group public.whatsapp_groups;
  v_msg public.messages;
begin
  if v_uid is null then
    raise exception 'not authenticated'
      using errcode = '42501', hint = 'Sign in before sending messages.';
  end if;
  if p_group_jid is null or p_group_jid !~ '^[0-9]+(-[0-9]+)?@g\.us$' then
    raise exception 'invalid group_jid: %', coalesce(p_group_jid, 'null')
      using errcode = '22023', hint = 'A group JID looks like 120363025246125888@g.us.';
  end if;
  -- Same whitespace set as the messages_content_not_blank check.
  if p_content is null or p_content !~ '[^\s\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]' then
    raise exception 'content is empty'
      using errcode = '22004', hint = 'Type a message before sending.';
  end if;
  if char_length(p_content) > 65536 then
    raise exception 'content is too long: % characters (at most 65536)', char_length(p_content)
      using errcode = '22001';
  end if;

  -- A retry with the same key gets the row it made before, whatever happened to the group since.
  if p_client_msg_id is not null then
    select * into v_msg from public.messages m
    where m.sender_id = v_uid and m.client_msg_id = p_client_msg_id;
    if found then
      return private.same_request_or_raise(v_msg, p_group_jid, p_content);
    end if;
  end if;

  -- Not select *: participants can be a large jsonb, and only the flags matter here.
  select g.is_active, g.is_readonly, g.readonly_reason
  into v_group.is_active, v_group.is_readonly, v_group.readonly_reason
  from public.whatsapp_groups g where g.jid = p_group_jid;
  if not found then
    raise exception 'unknown group: %', p_group_jid
      using errcode = 'PT404', hint = 'The group has not been synced from WhatsApp.';
  end if;
  -- Inline rather than through the RLS helpers: this plan is cached, a SQL helper's is not.
  if not exists (
       select 1
       from public.group_assignments ga
       join public.employee_group_members m on m.employee_group_id = ga.employee_group_id
       where ga.group_jid = p_group_jid and m.user_id = v_uid)
     and coalesce(auth.jwt() -> 'app_metadata' ->> 'role', '') <> 'admin' then
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

  insert into public.messages (group_jid, sender_id, content, client_msg_id)
  values (p_group_jid, v_uid, p_content, p_client_msg_id)
  on conflict (sender_id, client_msg_id) where client_msg_id is not null do nothing
  returning * into v_msg;

  if not found then
    -- A concurrent call with the same key inserted first; it has committed by now.
    select * into v_msg from public.messages m
    where m.sender_id = v_uid and m.client_msg_id = p_client_msg_id;
    return private.same_request_or_raise(v_msg, p_group_jid, p_content);
  end if;

  -- The row pgmq.send('whatsapp_outbound', msg, headers) would write, visible at once. pgmq.send
  -- builds its INSERT with dynamic SQL on every call; this static one keeps a cached plan and
  -- halves the cost of enqueueing (bench/). tests/test_send_message.py pins the table's shape.
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
set search_path = ''
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
set search_path = ''
as $$
begin
  return private.send_message(group_jid, content, client_msg_id);
end
$$;
comment on function public.send_message(text, text, uuid) is
  'Queue a WhatsApp message to a group the caller may post to. Returns the messages row (status pending).';

revoke execute on function private.send_message(text, text, uuid) from public;
revoke execute on function private.same_request_or_raise(public.messages, text, text) from public;
revoke execute on function public.send_message(text, text, uuid) from public, anon;
grant usage on schema private to service_role;
grant execute on function private.send_message(text, text, uuid) to authenticated, service_role;
grant execute on function public.send_message(text, text, uuid) to authenticated, service_role;
