-- Edit and delete: edit_message(id, content) and revoke_message(id) change a message that was
-- sent, by its sender or an admin. Each is a row of public.message_edits (who, when, the
-- content before and after: the audit trail) and a job on the same queue as the messages,
-- with the group's header, so it goes out in the group's order: an edit queued behind a
-- message still waiting goes after it.
--
-- The API (public, thin SECURITY INVOKER wrappers; the bodies in private run as their owner):
--   edit_message(id, content) → message_edits row (kind edit, status pending)
--   revoke_message(id)        → message_edits row (kind revoke, status pending)
-- The edit's row, not the message's: the message keeps what WhatsApp shows until the edit is
-- sent (then its content is the new text and edited_at is set; a sent revoke sets
-- revoked_at), and the caller follows the action by its own id and status.
--
-- The windows, from the message's sent_at (WhatsApp's acknowledgement time):
--   edit: 20 minutes, whatsmeow's EditWindow (send.go: "EditWindow specifies how long a
--     message can be edited for after it was sent", 20 * time.Minute); neither whatsmeow nor
--     neonize checks it, WhatsApp's clients drop a later edit, so it is checked here and again
--     when the job is claimed (an edit that waited past it fails rather than goes unseen).
--   revoke: 60 hours, WhatsApp's limit for "Delete for everyone" (2 days and 12 hours since
--     2022; the Help Center says "about 2 days").
-- A message that has been revoked, or whose revoke is queued, can be neither edited nor
-- revoked again. Only text messages are edited: an attachment's caption edit has another
-- protobuf shape that is not built here. Every refusal has its own SQLSTATE (README).
--
-- The job is {"message_id": <the message>, "edit_id": <the action>}. The transitions settle it
-- by its queue row: the poller's outcome writer passes message ids and queue ids as for any
-- send; a job with an edit_id moves its message_edits row (pending → sent | failed, its
-- attempts and error) and never the message's status, which is sent or later and stays so.
-- So settle.sql and the outcome writer are unchanged, and a batch mixes sends and edits.

alter table public.messages
  add column edited_at timestamptz,
  add column revoked_at timestamptz;
comment on column public.messages.edited_at is 'When its last edit was sent (message_edits).';
comment on column public.messages.revoked_at is
  'When it was deleted for everyone (a revoke sent: message_edits).';

create table public.message_edits (
  id uuid primary key default gen_random_uuid(),
  -- Goes with its message, as its receipts do: the message row is the record being audited.
  message_id uuid not null references public.messages (id) on delete cascade,
  group_jid text not null,  -- the message's, so that reading it costs what reading messages does
  kind text not null check (kind in ('edit', 'revoke')),
  old_content text not null,
  new_content text,
  actor_id uuid not null,  -- a value, like messages.sender_id: kept when the user is deleted
  actor_email varchar,
  status text not null default 'pending' check (status in ('pending', 'sent', 'failed')),
  error text,
  attempts integer not null default 0,
  created_at timestamptz not null default now(),
  sent_at timestamptz,
  constraint message_edits_new_content check ((kind = 'edit') = (new_content is not null))
);
create index message_edits_message_id_idx on public.message_edits (message_id, created_at);
comment on table public.message_edits is
  'Edits and revokes of sent messages (edit_message, revoke_message): who, when, before and after.';
alter table public.message_edits enable row level security;

create policy "Members can read edits of messages of groups assigned to their teams, admins all"
  on public.message_edits for select to authenticated
  using ((select private.is_admin()) or group_jid in (select private.my_group_jids()));

-- Written only by the functions below (their owner); read by the signed-in (RLS) and by the
-- service role (servers).
revoke all on public.message_edits from public, anon, authenticated, service_role;
grant select on public.message_edits to authenticated, service_role;

-- The caller, the message and the checks both actions share; the message row is locked (no
-- key update) so that two actions on one message are decided one after the other.
create function private.editable_message(p_id uuid, p_kind text, p_window interval)
returns public.messages
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_uid uuid := auth.uid();
  v_admin boolean := coalesce(auth.jwt() -> 'app_metadata' ->> 'role', '') = 'admin';
  v_msg public.messages;
begin
  if v_uid is null then
    raise exception 'not authenticated'
      using errcode = '42501', hint = 'Sign in before changing messages.';
  end if;
  if not exists (select 1 from auth.users u where u.id = v_uid) then
    raise exception 'not authenticated: the user no longer exists'
      using errcode = '42501', hint = 'Sign in again.';
  end if;
  select * into v_msg from public.messages m where m.id = p_id for no key update;
  if not found or (not v_admin and v_msg.sender_id is distinct from v_uid) then
    raise exception 'message not found: %', p_id
      using errcode = 'PT404', hint = 'Only its sender or an admin can change a message.';
  end if;
  if v_msg.wa_message_id is null then
    raise exception 'message % has not been sent: it is %', p_id, v_msg.status
      using errcode = 'PT425', hint = 'Only a message WhatsApp accepted can be changed; cancel a scheduled one.';
  end if;
  if v_msg.revoked_at is not null or exists (
       select 1 from public.message_edits e
       where e.message_id = p_id and e.kind = 'revoke' and e.status <> 'failed') then
    raise exception 'message % has been deleted', p_id
      using errcode = 'PT409', hint = 'A deleted message can be neither edited nor deleted again.';
  end if;
  if v_msg.sent_at <= now() - p_window then
    raise exception 'message % was sent too long ago to %: at %', p_id, p_kind, v_msg.sent_at
      using errcode = 'PT410',
            hint = case p_kind when 'edit' then 'WhatsApp allows edits for 20 minutes after the send.'
                   else 'WhatsApp allows deleting for everyone for 60 hours after the send.' end;
  end if;
  return v_msg;
end
$$;

create function private.queue_message_edit(
  p_msg public.messages, p_kind text, p_new_content text
) returns public.message_edits
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_edit public.message_edits;
begin
  insert into public.message_edits (message_id, group_jid, kind, old_content, new_content,
                                    actor_id, actor_email)
  select p_msg.id, p_msg.group_jid, p_kind, p_msg.content, p_new_content, u.id, u.email
  from auth.users u where u.id = auth.uid()
  returning * into v_edit;
  insert into pgmq.q_whatsapp_outbound (vt, message, headers)
  values (clock_timestamp(),
          pg_catalog.jsonb_build_object('message_id', p_msg.id, 'edit_id', v_edit.id),
          pg_catalog.jsonb_build_object('x-pgmq-group', p_msg.group_jid::text));
  return v_edit;
end
$$;

create function private.edit_message(p_id uuid, p_content text) returns public.message_edits
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_msg public.messages := private.editable_message(p_id, 'edit', interval '20 minutes');
begin
  if v_msg.attachment_path is not null then
    raise exception 'message % has an attachment: only a text message can be edited', p_id
      using errcode = 'PT422', hint = 'Delete it and send it again with the new caption.';
  end if;
  return private.queue_message_edit(
    v_msg, 'edit', private.check_message_input(p_content, null, null, null));
end
$$;

create function private.revoke_message(p_id uuid) returns public.message_edits
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  return private.queue_message_edit(
    private.editable_message(p_id, 'revoke', interval '60 hours'), 'revoke', null);
end
$$;

create function public.edit_message(id uuid, content text) returns public.message_edits
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  return private.edit_message(id, content);
end
$$;
comment on function public.edit_message(uuid, text) is
  'Edit a sent text message within 20 minutes (its sender or an admin): queued in the group''s order. Returns the message_edits row (pending).';

create function public.revoke_message(id uuid) returns public.message_edits
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  return private.revoke_message(id);
end
$$;
comment on function public.revoke_message(uuid) is
  'Delete a sent message for everyone within 60 hours (its sender or an admin): queued in the group''s order. Returns the message_edits row (pending).';

-- The transitions. A job whose action is settled (or gone) has nothing left to do, as a job
-- whose message is final: archived; one whose action is pending stays.
create or replace function private.archive_outbound(p_msg_ids bigint[]) returns setof bigint
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
  with moved as (
    delete from pgmq.q_whatsapp_outbound q
    where q.msg_id = any(p_msg_ids)
      and not exists (select 1 from public.messages m
                      where m.id = (q.message ->> 'message_id')::uuid
                        and m.status in ('pending', 'sending') and not (q.message ? 'edit_id'))
      and not exists (select 1 from public.message_edits e
                      where e.id = (q.message ->> 'edit_id')::uuid and e.status = 'pending')
    returning q.msg_id, q.read_ct, q.enqueued_at, q.vt, q.message, q.headers
  )
  insert into pgmq.a_whatsapp_outbound (msg_id, read_ct, enqueued_at, vt, message, headers)
  select m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message, m.headers from moved m
  returning msg_id
$$;

-- Sent: the action's row `sent`; an edit's text becomes the message's (the old one stays in
-- the audit row), a revoke marks the message. The message's own update finds nothing to do
-- for an action's job: its message is sent already.
create or replace function private.outbound_sent(
  p_ids uuid[], p_msg_ids bigint[], p_wa_message_ids text[], p_sent_ats timestamptz[]
) returns setof bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  update public.messages m
  set status = 'sent', wa_message_id = s.wa_message_id, sent_at = s.sent_at,
      attempts = m.attempts + 1, error_log = null
  from unnest(p_ids, p_wa_message_ids, p_sent_ats) as s(id, wa_message_id, sent_at)
  where m.id = s.id and m.status in ('pending', 'sending');
  with done as (
    update public.message_edits e
    set status = 'sent', sent_at = s.sent_at, attempts = e.attempts + 1, error = null
    from unnest(p_msg_ids, p_sent_ats) as s(msg_id, sent_at)
    join pgmq.q_whatsapp_outbound q on q.msg_id = s.msg_id
    where e.id = (q.message ->> 'edit_id')::uuid and e.status = 'pending'
    returning e.message_id, e.kind, e.new_content, e.sent_at, e.created_at
  ), latest as (  -- one row a message: a batch may hold several of its actions
    select d.message_id,
           (pg_catalog.array_agg(d.new_content order by d.created_at desc)
              filter (where d.kind = 'edit'))[1] as new_content,
           pg_catalog.max(d.sent_at) filter (where d.kind = 'edit') as edited_at,
           pg_catalog.max(d.sent_at) filter (where d.kind = 'revoke') as revoked_at
    from done d group by d.message_id
  )
  update public.messages m
  set content = coalesce(l.new_content, m.content),
      edited_at = coalesce(l.edited_at, m.edited_at),
      revoked_at = coalesce(l.revoked_at, m.revoked_at)
  from latest l
  where m.id = l.message_id;
  return query select private.archive_outbound(p_msg_ids);
end
$$;

create or replace function private.outbound_retry(
  p_ids uuid[], p_msg_ids bigint[], p_errors text[], p_delays double precision[]
) returns setof bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  update public.messages m
  set status = 'pending', error_log = r.error, attempts = m.attempts + 1
  from unnest(p_ids, p_errors) as r(id, error)
  where m.id = r.id and m.status in ('pending', 'sending');
  update public.message_edits e
  set error = r.error, attempts = e.attempts + 1
  from unnest(p_msg_ids, p_errors) as r(msg_id, error)
  join pgmq.q_whatsapp_outbound q on q.msg_id = r.msg_id
  where e.id = (q.message ->> 'edit_id')::uuid and e.status = 'pending';
  return query select private.delay_outbound(p_msg_ids, p_delays);
end
$$;

create or replace function private.fail_outbound(
  p_ids uuid[], p_msg_ids bigint[], p_errors text[], p_attempted boolean
) returns setof bigint
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  update public.messages m
  set status = 'failed', error_log = f.error,
      attempts = m.attempts + case when p_attempted then 1 else 0 end
  from unnest(p_ids, p_errors) as f(id, error)
  where m.id = f.id and m.status in ('pending', 'sending');
  update public.message_edits e
  set status = 'failed', error = f.error,
      attempts = e.attempts + case when p_attempted then 1 else 0 end
  from unnest(p_msg_ids, p_errors) as f(msg_id, error)
  join pgmq.q_whatsapp_outbound q on q.msg_id = f.msg_id
  where e.id = (q.message ->> 'edit_id')::uuid and e.status = 'pending';
  return query select private.archive_outbound(p_msg_ids);
end
$$;

-- Expiry as before, and an action's job expires by its own age like a message's.
create or replace function private.expire_outbound(p_ttl double precision) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_window bigint[];
  v_done bigint[];
  v_ids uuid[];
  v_msg_ids bigint[];
begin
  -- The oldest jobs by queue order, whether visible or not, so that the look costs the window
  -- and not what is in flight ahead of it; of those, the visible ones with nothing left to do
  -- are archived (or they would fill the window for good), and the expired ones fail, locked
  -- (a young one stays free for the take).
  select array_agg(w.msg_id) into v_window
  from (select q.msg_id from pgmq.q_whatsapp_outbound q order by q.msg_id limit 200) w;
  if v_window is null then
    return;
  end if;
  select array_agg(d.msg_id) into v_done
  from (
    select q.msg_id from pgmq.q_whatsapp_outbound q
    where q.msg_id = any(v_window) and q.vt <= clock_timestamp()
      and not exists (select 1 from public.messages m
                      where m.id = (q.message ->> 'message_id')::uuid
                        and m.status in ('pending', 'sending') and not (q.message ? 'edit_id'))
      and not exists (select 1 from public.message_edits e
                      where e.id = (q.message ->> 'edit_id')::uuid and e.status = 'pending')
    for update of q skip locked
  ) d;
  if v_done is not null then  -- the archive's delete and insert cost a third of a read
    perform private.archive_outbound(v_done);
  end if;
  select array_agg(o.message_id), array_agg(o.msg_id)
  into v_ids, v_msg_ids
  from (
    select x.msg_id, (x.message ->> 'message_id')::uuid as message_id,
           (x.message ->> 'edit_id')::uuid as edit_id
    from pgmq.q_whatsapp_outbound x
    where x.msg_id = any(v_window)
      and x.enqueued_at <= clock_timestamp() - make_interval(secs => p_ttl)
      and x.vt <= clock_timestamp()
    for update skip locked
  ) o
  left join public.messages m on m.id = o.message_id and o.edit_id is null
  left join public.message_edits e on e.id = o.edit_id
  where (m.id is not null and coalesce(m.send_at, m.created_at) <= now() - make_interval(secs => p_ttl)
         and m.status in ('pending', 'sending'))
     or (e.created_at <= now() - make_interval(secs => p_ttl) and e.status = 'pending');
  if v_ids is not null then
    perform private.fail_outbound(
      v_ids, v_msg_ids,
      array_fill(format('expired: not sent within %s s (its WhatsApp session was not connected)',
                        p_ttl), array[cardinality(v_ids)]),
      false);
  end if;
end
$$;

-- The claim, with an action's job beside the sends: its `done`, TTL and window from its own
-- row, the group's order and session as for any job; returned with `details`
--   {"edit": {"edit_id", "wa_message_id", "content"}} or
--   {"revoke": {"edit_id", "wa_message_id", "sender": our account's phone JID}}
-- (the message was sent by our own account, the group's session's), `content` the new text
-- (a revoke: the current one, for the logs) and `attempts` the action's own.
alter type private.outbound_settling add attribute edit_id uuid;

create or replace function private.claim_outbound(
  p_msg_ids bigint[],
  p_message_ids uuid[],
  p_sessions uuid[],
  p_me text,
  p_held bigint[],
  p_ttl double precision
) returns setof private.outbound_job
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_groups text[];
  v_earliest bigint[];
  v_batch private.outbound_settling[];
  v_done bigint[];
  v_fail_ids uuid[];
  v_fail_msg_ids bigint[];
  v_fail_errors text[];
  v_back bigint[];
begin
  -- The earliest message of each of the batch's groups that is neither in the batch nor held
  -- by the caller, through the group index.
  select coalesce(array_agg(e.group_jid), '{}'), coalesce(array_agg(e.msg_id), '{}')
  into v_groups, v_earliest
  from (select distinct b.headers ->> 'x-pgmq-group' as group_jid
        from pgmq.q_whatsapp_outbound b where b.msg_id = any(p_msg_ids)) bg
  cross join lateral (
    select bg.group_jid, q.msg_id
    from pgmq.q_whatsapp_outbound q
    where (q.headers ->> 'x-pgmq-group') = bg.group_jid
      and q.msg_id <> all(p_msg_ids) and q.msg_id <> all(p_held)
    order by q.msg_id
    limit 1
  ) e;

  -- In a variable, not a temporary table: a caller's own pg_temp must play no part here.
  -- The TTL counts from send_at for a scheduled message, from its own writing for an action.
  select coalesce(array_agg(row(
         b.msg_id, b.message_id, m.group_jid::text, g.session_id, m.content, m.attempts,
         case
           when x.edit_id is null and (m.id is null or m.status not in ('pending', 'sending')) then 'done'
           when x.edit_id is not null and (a.id is null or a.status <> 'pending' or m.id is null) then 'done'
           when coalesce(e.msg_id < b.msg_id, false) then 'back'
           when not (g.session_id = any(p_sessions) and s.lease_owner = p_me
                     and s.lease_expires_at > now()) then 'back'
           when coalesce(a.created_at, m.send_at, m.created_at) <= now() - make_interval(secs => p_ttl) then 'fail'
           when m.sent_at <= now() - case a.kind when 'edit' then interval '20 minutes'
                                                 when 'revoke' then interval '60 hours' end then 'fail'
           when not g.is_active then 'fail'
           when g.is_readonly then 'fail'
           else 'send'
         end,
         case
           when coalesce(a.created_at, m.send_at, m.created_at) <= now() - make_interval(secs => p_ttl) then
             format('expired: not sent within %s s (its WhatsApp session was not connected)',
                    p_ttl)
           when m.sent_at <= now() - case a.kind when 'edit' then interval '20 minutes'
                                                 when 'revoke' then interval '60 hours' end then
             format('too late to %s: WhatsApp''s window after the send (%s) has passed',
                    a.kind, m.sent_at)
           when not g.is_active then 'group is inactive: the WhatsApp account left it'
           when g.is_readonly then format('group is read-only: %s', g.readonly_reason)
         end,
         x.edit_id)::private.outbound_settling), '{}')
  into v_batch
  from unnest(p_msg_ids, p_message_ids) as b(msg_id, message_id)
  left join pgmq.q_whatsapp_outbound qj on qj.msg_id = b.msg_id
  cross join lateral (select (qj.message ->> 'edit_id')::uuid as edit_id) x
  left join public.message_edits a on a.id = x.edit_id
  left join public.messages m on m.id = b.message_id
  left join public.whatsapp_groups g on g.jid = m.group_jid
  left join public.whatsapp_sessions s on s.id = g.session_id
  left join unnest(v_groups, v_earliest) as e(group_jid, msg_id) on e.group_jid = m.group_jid;

  select array_agg(b.msg_id) filter (where b.outcome = 'done'),
         array_agg(b.message_id) filter (where b.outcome = 'fail'),
         array_agg(b.msg_id) filter (where b.outcome = 'fail'),
         array_agg(b.error) filter (where b.outcome = 'fail'),
         array_agg(b.msg_id) filter (where b.outcome = 'back')
  into v_done, v_fail_ids, v_fail_msg_ids, v_fail_errors, v_back
  from unnest(v_batch) b;
  if v_done is not null then
    perform private.archive_outbound(v_done);
  end if;
  if v_fail_ids is not null then
    perform private.fail_outbound(v_fail_ids, v_fail_msg_ids, v_fail_errors, false);
  end if;
  if v_back is not null then
    update public.messages m set status = 'pending'
    from unnest(v_batch) b
    where m.id = b.message_id and b.outcome = 'back' and m.status = 'sending'
      and b.edit_id is null;
    perform private.retime_outbound(v_back, 0);
  end if;

  return query
  with claimed as (
    update public.messages m
    set status = 'sending'
    from unnest(v_batch) b
    where m.id = b.message_id and b.outcome = 'send' and b.edit_id is null
      and m.status in ('pending', 'sending')
    returning m.id, m.attachment_bucket, m.attachment_path, m.attachment_kind,
              m.attachment_mime_type, m.attachment_size, m.attachment_file_name, m.reply_to,
              m.mentions
  )
  select b.msg_id, b.message_id, b.group_jid, b.session_id, b.content, b.attempts,
         case when c.attachment_path is null and c.reply_to is null and c.mentions is null then null
         else
           case when c.attachment_path is null then '{}'::jsonb
                else jsonb_build_object('attachment', jsonb_build_object(
                       'bucket', c.attachment_bucket, 'path', c.attachment_path,
                       'kind', c.attachment_kind, 'mime_type', c.attachment_mime_type,
                       'size', c.attachment_size, 'file_name', c.attachment_file_name)) end
           || case when c.reply_to is null then '{}'::jsonb
                   else jsonb_build_object('reply_to', jsonb_build_object(
                          'message_id', r.id, 'wa_message_id', r.wa_message_id,
                          'content', r.content, 'attachment_kind', r.attachment_kind,
                          'sender', s.wa_jid, 'sender_lid', s.wa_lid)) end
           || case when c.mentions is null then '{}'::jsonb
                   else jsonb_build_object('mentions', c.mentions) end
         end
  from unnest(v_batch) b
  join claimed c on c.id = b.message_id
  left join public.messages r on r.id = c.reply_to
  left join public.whatsapp_sessions s on s.id = b.session_id and c.reply_to is not null
  where b.edit_id is null
  union all
  select b.msg_id, b.message_id, b.group_jid, b.session_id,
         coalesce(a.new_content, b.content), a.attempts,
         jsonb_build_object(a.kind, jsonb_build_object(
           'edit_id', a.id, 'wa_message_id', m.wa_message_id)
           || case a.kind when 'edit' then jsonb_build_object('content', a.new_content)
                          else jsonb_build_object('sender', s.wa_jid) end)
  from unnest(v_batch) b
  join public.message_edits a on a.id = b.edit_id
  join public.messages m on m.id = b.message_id
  left join public.whatsapp_sessions s on s.id = b.session_id
  where b.outcome = 'send'
  order by 1;
end
$$;

-- Who may execute what (see the function privileges migration): the helpers run only inside
-- the RPCs' bodies; the transitions keep their grants (create or replace).
revoke execute on function
  private.editable_message(uuid, text, interval),
  private.queue_message_edit(public.messages, text, text),
  private.edit_message(uuid, text),
  private.revoke_message(uuid),
  public.edit_message(uuid, text),
  public.revoke_message(uuid)
  from public, anon, authenticated, service_role;
grant execute on function
  private.edit_message(uuid, text),
  private.revoke_message(uuid),
  public.edit_message(uuid, text),
  public.revoke_message(uuid)
  to authenticated, service_role;
