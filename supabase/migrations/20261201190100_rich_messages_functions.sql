-- Rich messages, part 2: send_message with attachments, replies, mentions and scheduled sends;
-- cancel_message; send_to_groups (one message to many groups, all or nothing); the promotion
-- of scheduled messages that fall due; and the job's `details` for the poller.
--
-- The API (public, thin SECURITY INVOKER wrappers; the bodies in private run as their owner):
--   send_message(group_jid, content, client_msg_id, attachment_bucket, attachment_path,
--                reply_to, mentions, send_at) → messages row
--   send_to_groups(group_jids, content, client_msg_id, attachment_bucket, attachment_path,
--                  send_at) → setof messages row, one per group, in the order given
--   cancel_message(id) → messages row (status canceled)
-- Every refusal has its own SQLSTATE, message and hint (the README's error table), and leaves
-- nothing written.

-- Statuses: scheduled → pending (it fell due and was queued), scheduled → canceled (taken
-- back), scheduled → failed (it fell due past its TTL); the rest as before.
create or replace function private.enforce_status_order() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  rank_old int := array_position(array['pending', 'sending', 'sent', 'delivered', 'read'], old.status::text);
  rank_new int := array_position(array['pending', 'sending', 'sent', 'delivered', 'read'], new.status::text);
begin
  if new.status = old.status
     or (old.status = 'sending' and new.status = 'pending')
     or (old.status = 'scheduled' and new.status in ('pending', 'canceled', 'failed'))
     or (new.status = 'failed' and old.status in ('pending', 'sending'))
     or (rank_old is not null and rank_new is not null and rank_new > rank_old) then
    return new;
  end if;
  raise exception 'message % cannot go from % to %', old.id, old.status, new.status
    using errcode = '23514', hint = 'Statuses only move forward.';
end
$$;

-- The scheduled messages by the time they fall due, one row each while it is `scheduled`:
-- the promotion reads the due end through its index, so it costs what falls due. A table of
-- their own, not a partial index on messages: the look for due messages, on every take and on
-- every immediate send, keeps its cached plan, and a plan made while there was little to scan
-- (a seq scan) then costs what is scheduled, never what messages holds. Not in `public`: no
-- API role has any privilege on it; the RPCs and the take write it as their owner.
create table private.scheduled_messages (
  message_id uuid primary key references public.messages (id) on delete cascade,
  group_jid text not null,
  send_at timestamptz not null
);
create index scheduled_messages_send_at_idx on private.scheduled_messages (send_at, message_id);
alter table private.scheduled_messages enable row level security;
revoke all on private.scheduled_messages from public;

-- WhatsApp's limits per kind, from the Cloud API's "Supported media types"
-- (developers.facebook.com/docs/whatsapp/cloud-api/reference/media#supported-media-types;
-- the same table in AWS End User Messaging Social's "Supported media file types and sizes in
-- WhatsApp"): images are JPEG or PNG up to 5 MB; documents up to 100 MB. Any other type goes
-- as a document: the linked-device protocol (whatsmeow's DocumentMessage) carries any MIME
-- type, and a photo in another format (HEIC, WebP, GIF) arrives as a file. MB counted as MiB.
-- A type is needed (the receiving phone picks its viewer by it): an object without one, or
-- with something that is not a MIME type, is refused.
create function private.attachment_limit(p_kind text) returns bigint
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case p_kind when 'image' then 5 * 1024 * 1024 when 'document' then 100 * 1024 * 1024 end::bigint
$$;

-- The object's metadata if the CALLER may read it under Storage's RLS, else null. The bodies
-- of the RPCs run as their owner, which bypasses RLS, and a definer cannot SET ROLE; and a
-- check in the invoker wrapper alone would not hold, since the body is callable directly. So
-- this evaluates storage.objects' SELECT policies for the calling role (the role PostgREST set,
-- else the session's) itself: the role needs SELECT on the table, then either bypasses RLS
-- (service_role, the owner) or the row must pass one permissive policy and every restrictive
-- one that applies to the role, exactly the expressions Postgres would add. The expressions
-- read the caller's JWT through auth.uid()/auth.jwt(), which this transaction shares; one
-- difference remains: a sub-select inside a policy reads its tables as the owner, so a policy
-- that relies on another table's RLS to hide rows is more permissive here. Policies come from
-- the catalog (the project's own DDL); the bucket and path are parameters, never spliced in.
create function private.caller_storage_object(p_bucket text, p_path text) returns jsonb
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role name := coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user);
  v_bypass boolean;
  v_permissive text;
  v_restrictive text;
  v_metadata jsonb;
  v_found boolean;
begin
  if not pg_catalog.has_table_privilege(v_role, 'storage.objects', 'select') then
    return null;
  end if;
  select r.rolsuper or r.rolbypassrls or not c.relrowsecurity
         or (pg_catalog.pg_has_role(v_role, c.relowner, 'usage') and not c.relforcerowsecurity)
  into v_bypass
  from pg_catalog.pg_roles r, pg_catalog.pg_class c
  where r.rolname = v_role and c.oid = 'storage.objects'::regclass;
  if v_bypass then
    select o.metadata, true into v_metadata, v_found
    from storage.objects o where o.bucket_id = p_bucket and o.name = p_path;
  else
    select pg_catalog.string_agg('(' || coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), 'false') || ')',
                                 ' or ') filter (where p.polpermissive),
           pg_catalog.string_agg('(' || coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), 'true') || ')',
                                 ' and ') filter (where not p.polpermissive)
    into v_permissive, v_restrictive
    from pg_catalog.pg_policy p
    where p.polrelid = 'storage.objects'::regclass and p.polcmd in ('r', '*')
      and ('0'::oid = any (p.polroles)
           or exists (select 1 from pg_catalog.unnest(p.polroles) as pr(oid)
                      where pg_catalog.pg_has_role(v_role, pr.oid, 'usage')));
    if v_permissive is null then
      return null;  -- RLS on and no policy: nothing is readable
    end if;
    execute pg_catalog.format(
      'select metadata, true from storage.objects where bucket_id = $1 and name = $2 and (%s) and (%s)',
      v_permissive, coalesce(v_restrictive, 'true'))
    into v_metadata, v_found
    using p_bucket, p_path;
  end if;
  if v_found then
    return coalesce(v_metadata, '{}'::jsonb);
  end if;
  return null;
end
$$;

-- An attachment's columns as the message row keeps them, or the refusal: not found (or not
-- readable by the caller: the same answer, so that nobody learns what they cannot read), type
-- not allowed, too big for its kind.
create type private.attachment as (
  bucket text, path text, kind text, mime_type text, size bigint, file_name text
);

create function private.check_attachment(p_bucket text, p_path text) returns private.attachment
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_metadata jsonb := private.caller_storage_object(p_bucket, p_path);
  v_mime text;
  v_size bigint;
  v_kind text;
begin
  -- Storage writes the metadata once the upload is complete.
  if v_metadata is null or pg_catalog.jsonb_typeof(v_metadata -> 'size') is distinct from 'number' then
    raise exception 'attachment not found: %', private.echo(p_bucket || '/' || p_path)
      using errcode = 'PT404',
            hint = 'Upload the file to Storage first (the upload must be complete), and check that you may read it.';
  end if;
  v_mime := pg_catalog.lower(pg_catalog.btrim(pg_catalog.split_part(v_metadata ->> 'mimetype', ';', 1)));
  if v_mime is null or v_mime !~ '^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$' then
    raise exception 'attachment type not allowed: %', private.echo(coalesce(v_metadata ->> 'mimetype', 'none'))
      using errcode = 'PT415',
            hint = 'Upload the file with its content type (image/jpeg, image/png, application/pdf, ...).';
  end if;
  v_kind := case when v_mime in ('image/jpeg', 'image/png') then 'image' else 'document' end;
  v_size := (v_metadata ->> 'size')::numeric::bigint;
  if v_size > private.attachment_limit(v_kind) then
    raise exception 'attachment is too big for a WhatsApp %: % bytes (at most %)',
                    v_kind, v_size, private.attachment_limit(v_kind)
      using errcode = 'PT413',
            hint = case v_kind when 'image' then 'Images go up to 5 MB: compress it, or send it as a PDF.'
                   else 'Documents go up to 100 MB: split or compress the file.' end;
  end if;
  return row(p_bucket, p_path, v_kind, v_mime, v_size,
             pg_catalog.regexp_replace(p_path, '^.*/', ''))::private.attachment;
end
$$;

-- Mentions: participant JIDs (phone `<digits>@s.whatsapp.net` or `<digits>@lid`), matched
-- against the group's synced participants by any of their ids (in a LID-addressed group a
-- participant's `jid` is its LID and its phone JID is `phone_number`), or the single value
-- 'everyone'. Kept as [{"jid": phone JID or null, "lid": LID or null}] in the order given,
-- once each, so the poller can mention by LID where the group addresses by LID.
create function private.resolve_mentions(p_group_jid text, p_mentions text[]) returns jsonb
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_bad text;
  v_missing text[];
  v_resolved jsonb;
begin
  if p_mentions is null or pg_catalog.cardinality(p_mentions) = 0 then
    return null;
  end if;
  if 'everyone' = any (p_mentions) then
    if pg_catalog.cardinality(p_mentions) > 1 then
      raise exception 'mentions: ''everyone'' goes alone'
        using errcode = '22023', hint = 'Mention everyone, or list participants, not both.';
    end if;
    return '{"everyone": true}'::jsonb;
  end if;
  select m into v_bad from pg_catalog.unnest(p_mentions) as u(m)
  where m is null or m !~ '^[0-9]{1,32}@(s\.whatsapp\.net|lid)$' limit 1;
  if found then
    raise exception 'invalid mention: %', private.echo(v_bad)
      using errcode = '22023',
            hint = 'A mention is a participant''s JID (905551112233@s.whatsapp.net), its LID (123456789012345@lid), or ''everyone''.';
  end if;

  with wanted as (
    select u.m, u.n from pg_catalog.unnest(p_mentions) with ordinality as u(m, n)
  ), people as (
    select p.value as p
    from public.whatsapp_groups g, pg_catalog.jsonb_array_elements(
           case when pg_catalog.jsonb_typeof(g.participants) = 'array' then g.participants
                else '[]'::jsonb end) as p
    where g.jid = p_group_jid
  ), matched as (
    select w.m, w.n, x.p
    from wanted w
    left join lateral (
      select pe.p from people pe
      where w.m in (pe.p ->> 'jid', pe.p ->> 'lid', pe.p ->> 'phone_number') limit 1
    ) x on true
  )
  select pg_catalog.array_agg(m.m order by m.n) filter (where m.p is null),
         (select pg_catalog.jsonb_agg(f.o order by f.n) from (
            select d.o, pg_catalog.min(d.n) as n from (
              select pg_catalog.jsonb_build_object(
                       'jid', case when mm.p ->> 'jid' like '%@s.whatsapp.net' then mm.p ->> 'jid'
                                   when mm.p ->> 'phone_number' like '%@s.whatsapp.net' then mm.p ->> 'phone_number' end,
                       'lid', case when mm.p ->> 'lid' like '%@lid' then mm.p ->> 'lid'
                                   when mm.p ->> 'jid' like '%@lid' then mm.p ->> 'jid' end) as o, mm.n
              from matched mm where mm.p is not null) d
            group by d.o) f)
  into v_missing, v_resolved
  from matched m;
  if v_missing is not null then
    raise exception 'not participants of group %: %', p_group_jid,
                    private.echo(pg_catalog.array_to_string(v_missing, ', '))
      using errcode = 'PT422',
            hint = 'Mention members of the group as last synced from WhatsApp (whatsapp_groups.participants).';
  end if;
  return v_resolved;
end
$$;

-- A reply quotes a message of the same group that was sent (WhatsApp needs its id). A
-- message the caller cannot read is answered as unknown.
create function private.check_reply(p_uid uuid, p_admin boolean, p_group_jid text, p_reply_to uuid)
returns void
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_group text;
  v_wa_id text;
begin
  select r.group_jid, r.wa_message_id into v_group, v_wa_id
  from public.messages r where r.id = p_reply_to;
  if found and v_group <> p_group_jid and not p_admin and not exists (
       select 1
       from public.group_assignments ga
       join public.employee_group_members m on m.employee_group_id = ga.employee_group_id
       where ga.group_jid = v_group and m.user_id = p_uid) then
    v_group := null;
  end if;
  if v_group is null then
    raise exception 'reply_to message not found: %', p_reply_to
      using errcode = 'PT404', hint = 'Reply to a message of this group that was sent.';
  end if;
  if v_group <> p_group_jid then
    raise exception 'reply_to message % belongs to another group', p_reply_to
      using errcode = 'PT422', hint = 'A reply quotes a message of the same group.';
  end if;
  if v_wa_id is null then
    raise exception 'reply_to message % has not been sent yet', p_reply_to
      using errcode = 'PT425', hint = 'Reply once it has been sent: WhatsApp quotes sent messages only.';
  end if;
end
$$;

-- A scheduled send: in the future, at most 30 days ahead (a reminder's horizon; further out
-- the group, its participants and the object may well have changed).
create function private.check_send_at(p_send_at timestamptz) returns void
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_send_at <= now() then
    raise exception 'send_at is not in the future: %', p_send_at
      using errcode = 'PT422', hint = 'Leave send_at out to send at once, or give a later time.';
  end if;
  if p_send_at > now() + interval '30 days' then
    raise exception 'send_at is more than 30 days ahead: %', p_send_at
      using errcode = 'PT416', hint = 'Schedule at most 30 days ahead.';
  end if;
end
$$;

-- Why the caller may not send to a group, or nulls: send_message's checks (which it keeps
-- inline, in the same words), so that send_to_groups can list every refused group. KEY SHARE: the group cannot be deleted (or
-- re-keyed) until the message is committed. Only the flags are read (participants can be large).
create function private.group_refusal(
  p_uid uuid, p_admin boolean, p_group_jid text, out code text, out message text, out hint text
)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_active boolean;
  v_readonly boolean;
  v_reason text;
begin
  select g.is_active, g.is_readonly, g.readonly_reason into v_active, v_readonly, v_reason
  from public.whatsapp_groups g where g.jid = p_group_jid
  for key share;
  if not found and p_admin then
    code := 'PT404';
    message := pg_catalog.format('unknown group: %s', p_group_jid);
    hint := 'The group has not been synced from WhatsApp.';
  elsif not p_admin and (not found or not exists (
          select 1
          from public.group_assignments ga
          join public.employee_group_members m on m.employee_group_id = ga.employee_group_id
          where ga.group_jid = p_group_jid and m.user_id = p_uid)) then
    code := 'PT403';
    message := pg_catalog.format('group %s is not assigned to any of your teams', p_group_jid);
    hint := 'Ask an admin to assign the group to your team.';
  elsif not v_active then
    code := 'PT410';
    message := pg_catalog.format('group %s is inactive', p_group_jid);
    hint := 'The WhatsApp account is no longer in this group.';
  elsif v_readonly then
    code := 'PT409';
    message := pg_catalog.format('group %s is read-only: %s', p_group_jid, v_reason);
    hint := 'The WhatsApp account cannot post in this group.';
  end if;
end
$$;

-- The per-sender quota for `p_count` new messages: the oldest of the sender's last
-- `limit - count + 1` messages within the minute; when it leaves the window there is room.
create function private.check_sender_quota(p_uid uuid, p_count integer) returns void
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_limit integer := (select l.sender_per_minute from public.send_limits l);
  v_since timestamptz;
begin
  if v_limit is null then
    return;
  end if;
  if p_count > v_limit then
    raise exception 'too many messages: at most % a minute per sender', v_limit
      using errcode = 'PT429', hint = 'Send to fewer groups at once, or ask an admin to raise the limit.';
  end if;
  select m.created_at into v_since
  from public.messages m
  where m.sender_id = p_uid and m.created_at > now() - interval '1 minute'
  order by m.created_at desc
  offset v_limit - p_count limit 1;
  if found then
    raise exception 'too many messages: at most % a minute per sender', v_limit
      using errcode = 'PT429',
            hint = pg_catalog.format('Retry in %s s.',
                     greatest(1, ceil(extract(epoch from v_since + interval '1 minute' - now())))::int);
  end if;
end
$$;

-- Whether a group already has as many messages waiting as the limit allows (null: no limit).
-- The count stops at the limit, so a check costs at most `limit` index entries. plpgsql, so
-- that its plan is cached (a SQL function with a SET clause is planned at every call).
create function private.group_is_full(p_group_jid text, p_limit integer) returns boolean
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
  return p_limit is not null and (
    select pg_catalog.count(*) from (
      select 1 from public.messages m
      where m.group_jid = p_group_jid and m.status in ('pending', 'sending')
      limit p_limit) w) >= p_limit;
end
$$;

-- Scheduled messages that have fallen due go on the queue, in the order they fell due (then
-- the order they were written), so within a group they keep that order against each other and
-- against what is sent later. Those already past their TTL (`p_ttl`, when given: no poller
-- took messages for that long) fail as expired instead. The take calls it before it reads
-- (no daemon of its own), and send_message for its groups before it queues (a message sent now
-- goes behind one that fell due before it). `p_groups` null: every group. Rows locked by a
-- concurrent promotion or a cancel are skipped. At most 500 a call; the next take takes the
-- rest. Lock order, as in cancel_message: the schedule row, then the message.
create function private.promote_scheduled(p_groups text[], p_ttl double precision)
returns integer
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_due uuid[];
  v_expired uuid[];
  v_ids uuid[];
  v_groups text[];
begin
  with due as (
    delete from private.scheduled_messages s
    where s.message_id in (
      select d.message_id from private.scheduled_messages d
      where d.send_at <= now() and (p_groups is null or d.group_jid = any (p_groups))
      order by d.send_at, d.message_id
      limit 500
      for update skip locked)
    returning s.message_id, s.send_at
  )
  select pg_catalog.array_agg(d.message_id) filter (where p_ttl is null or d.send_at > now() - make_interval(secs => p_ttl)),
         pg_catalog.array_agg(d.message_id) filter (where d.send_at <= now() - make_interval(secs => p_ttl))
  into v_due, v_expired
  from due d;
  if v_expired is not null then
    update public.messages m
    set status = 'failed',
        error_log = pg_catalog.format('expired: not sent within %s s of its send_at (no poller was taking messages)', p_ttl)
    where m.id = any (v_expired) and m.status = 'scheduled';
  end if;
  if v_due is null then
    return 0;
  end if;
  -- Only what is still scheduled (an admin may have changed a status by hand).
  with promoted as (
    update public.messages m set status = 'pending'
    where m.id = any (v_due) and m.status = 'scheduled'
    returning m.id, m.group_jid::text as group_jid, m.send_at, m.created_at
  )
  select pg_catalog.array_agg(p.id order by p.send_at, p.created_at, p.id),
         pg_catalog.array_agg(p.group_jid order by p.send_at, p.created_at, p.id)
  into v_ids, v_groups
  from promoted p;
  if v_ids is null then
    return 0;
  end if;
  -- The queue's msg_id follows the insert's order: the order they fell due.
  insert into pgmq.q_whatsapp_outbound (vt, message, headers)
  select clock_timestamp(), pg_catalog.jsonb_build_object('message_id', d.id),
         pg_catalog.jsonb_build_object('x-pgmq-group', d.group_jid)
  from unnest(v_ids, v_groups) with ordinality as d(id, group_jid, n)
  order by d.n;
  return pg_catalog.cardinality(v_ids);
end
$$;

-- The fan-out's batch id for a client key: derived from the sender and the key, so a retry
-- finds its rows and two senders' keys never meet.
create function private.batch_id_for(p_uid uuid, p_client_msg_id uuid) returns uuid
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.md5(p_uid::text || '/send_to_groups/' || p_client_msg_id::text)::uuid
$$;

-- Reusing a key for a different message is a client bug: say so rather than drop the message.
-- Compared: what the caller gave, but the mentions (a retry gets its row back whatever
-- happened to the group since, its participants included).
create function private.same_message_or_raise(
  p_msg public.messages, p_client_msg_id uuid, p_group_jid text, p_content text, p_bucket text,
  p_path text, p_reply_to uuid, p_send_at timestamptz
) returns public.messages
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_msg.group_jid is distinct from p_group_jid or p_msg.content is distinct from p_content
     or p_msg.attachment_bucket is distinct from p_bucket or p_msg.attachment_path is distinct from p_path
     or p_msg.reply_to is distinct from p_reply_to or p_msg.send_at is distinct from p_send_at then
    raise exception 'client_msg_id % was already used for a different message', p_client_msg_id
      using errcode = 'PT422', hint = 'Use a new client_msg_id for each new message.';
  end if;
  return p_msg;
end
$$;

-- The input checks send_message and send_to_groups share, cheapest first: content (empty is
-- allowed with an attachment: it becomes the caption, ''), the attachment's two halves, and
-- send_at. Returns the content as stored.
create function private.check_message_input(
  p_content text, p_bucket text, p_path text, p_send_at timestamptz
) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_blank boolean := private.is_blank(p_content);
begin
  if (p_bucket is null) <> (p_path is null) then
    raise exception 'attachment_bucket and attachment_path go together'
      using errcode = '22023', hint = 'Give the Storage bucket and the object''s path in it, or neither.';
  end if;
  if p_path is null and v_blank then
    raise exception 'content is empty'
      using errcode = '22004', hint = 'Type a message before sending.';
  end if;
  if char_length(p_content) > 65536 then
    raise exception 'content is too long: % characters (at most 65536)', char_length(p_content)
      using errcode = '22001', hint = 'Length counts Unicode code points.';
  end if;
  if p_send_at is not null then
    perform private.check_send_at(p_send_at);
  end if;
  return case when v_blank then '' else p_content end;
end
$$;

drop function public.send_message(text, text, uuid);
drop function private.send_message(text, text, uuid);
drop function private.same_request_or_raise(public.messages, text, text);

-- The body runs as its owner (it inserts into messages and the queue, which callers cannot)
-- in `private`, which the API does not expose; public.send_message is the thin RPC entry.
-- The checks run cheapest first, and a caller who may not see a group (or a message, or an
-- object) learns nothing about it. A scheduled message (send_at) is written `scheduled` with
-- no job: the take queues it when it falls due, so it never holds its group back meanwhile.
-- A plain text message takes the same path as before, inline (each helper call with a SET
-- clause costs a search_path switch, and this is the hot path: bench/); each option calls
-- its check only when given. The group checks are group_refusal's, in the same words.
create function private.send_message(
  p_group_jid text, p_content text, p_client_msg_id uuid, p_attachment_bucket text,
  p_attachment_path text, p_reply_to uuid, p_mentions text[], p_send_at timestamptz
) returns public.messages
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_uid uuid := auth.uid();
  v_admin boolean := coalesce(auth.jwt() -> 'app_metadata' ->> 'role', '') = 'admin';
  v_email varchar;
  v_content text := p_content;
  v_group public.whatsapp_groups;
  v_limits public.send_limits;
  v_since timestamptz;
  v_mentions jsonb;
  v_attachment private.attachment;
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
  if p_attachment_bucket is null and p_attachment_path is null and p_send_at is null then
    if private.is_blank(p_content) then
      raise exception 'content is empty'
        using errcode = '22004', hint = 'Type a message before sending.';
    end if;
    if char_length(p_content) > 65536 then
      raise exception 'content is too long: % characters (at most 65536)', char_length(p_content)
        using errcode = '22001', hint = 'Length counts Unicode code points.';
    end if;
  else
    v_content := private.check_message_input(p_content, p_attachment_bucket, p_attachment_path, p_send_at);
  end if;

  -- A retry with the same key gets the row it made before, whatever happened to the group or
  -- the quotas since.
  if p_client_msg_id is not null then
    select * into v_msg from public.messages m
    where m.sender_id = v_uid and m.client_msg_id = p_client_msg_id;
    if found then
      return private.same_message_or_raise(v_msg, p_client_msg_id, p_group_jid, v_content,
        p_attachment_bucket, p_attachment_path, p_reply_to, p_send_at);
    end if;
    if exists (select 1 from public.messages m
               where m.batch_id = private.batch_id_for(v_uid, p_client_msg_id)) then
      raise exception 'client_msg_id % was already used for a different message', p_client_msg_id
        using errcode = 'PT422', hint = 'Use a new client_msg_id for each new message.';
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
  if p_reply_to is not null then
    perform private.check_reply(v_uid, v_admin, p_group_jid, p_reply_to);
  end if;
  if p_mentions is not null then
    v_mentions := private.resolve_mentions(p_group_jid, p_mentions);
  end if;
  if p_attachment_path is not null then
    v_attachment := private.check_attachment(p_attachment_bucket, p_attachment_path);
  end if;

  -- Quotas, at the time of the call: a scheduled message counts for its sender now, and for
  -- its group once it waits in the queue. Each count stops at the limit, so a check costs at
  -- most `limit` index entries.
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
  if p_send_at is null and v_limits.group_pending is not null and (
       select count(*) from (
         select 1 from public.messages m
         where m.group_jid = p_group_jid and m.status in ('pending', 'sending')
         limit v_limits.group_pending) w) >= v_limits.group_pending then
    raise exception 'group % has % messages waiting to be sent (at most %)',
                    p_group_jid, v_limits.group_pending, v_limits.group_pending
      using errcode = 'PT429', hint = 'Retry once some of them have been sent.';
  end if;

  insert into public.messages (
    group_jid, sender_id, sender_email, content, client_msg_id, status, send_at, reply_to, mentions,
    attachment_bucket, attachment_path, attachment_kind, attachment_mime_type, attachment_size,
    attachment_file_name)
  values (
    p_group_jid, v_uid, v_email, v_content, p_client_msg_id,
    case when p_send_at is null then 'pending' else 'scheduled' end::public.message_status,
    p_send_at, p_reply_to, v_mentions,
    v_attachment.bucket, v_attachment.path, v_attachment.kind, v_attachment.mime_type,
    v_attachment.size, v_attachment.file_name)
  on conflict (sender_id, client_msg_id) where client_msg_id is not null do nothing
  returning * into v_msg;

  if not found then
    -- A concurrent call with the same key inserted first; it has committed by now.
    select * into v_msg from public.messages m
    where m.sender_id = v_uid and m.client_msg_id = p_client_msg_id;
    return private.same_message_or_raise(v_msg, p_client_msg_id, p_group_jid, v_content,
      p_attachment_bucket, p_attachment_path, p_reply_to, p_send_at);
  end if;

  if p_send_at is not null then
    insert into private.scheduled_messages (message_id, group_jid, send_at)
    values (v_msg.id, p_group_jid, p_send_at);
  else
    -- What fell due in this group before now goes first (the take may not have run yet).
    if exists (select 1 from private.scheduled_messages s where s.send_at <= now()) then
      perform private.promote_scheduled(array[p_group_jid], null);
    end if;
    -- The row pgmq.send('whatsapp_outbound', msg, headers) would write, visible at once (pgmq
    -- 1.5.1's columns): a static INSERT keeps a cached plan (pgmq.send builds it each call).
    insert into pgmq.q_whatsapp_outbound (vt, message, headers)
    values (clock_timestamp(),
            jsonb_build_object('message_id', v_msg.id),
            jsonb_build_object('x-pgmq-group', p_group_jid));
  end if;
  return v_msg;
end
$$;

-- One message to many groups: every group is checked first and nothing is written unless all
-- may be sent to (the error lists each refused group with its own code, in `detail` as JSON
-- [{group_jid, code, message}]). One row per group, in the order given, with a shared
-- batch_id; each has its own status and job, and the poller's per-session pacing spreads the
-- sends. With a client key the call is idempotent: a retry returns the same rows (batch_id is
-- derived from the sender and the key; the rows themselves carry no client_msg_id). At most
-- 256 groups a call (WhatsApp's own broadcast lists stop at 256). No mentions and no reply:
-- both are per group.
create function private.send_to_groups(
  p_group_jids text[], p_content text, p_client_msg_id uuid, p_attachment_bucket text,
  p_attachment_path text, p_send_at timestamptz
) returns setof public.messages
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_uid uuid := auth.uid();
  v_admin boolean := coalesce(auth.jwt() -> 'app_metadata' ->> 'role', '') = 'admin';
  v_email varchar;
  v_content text;
  v_bad text;
  v_batch uuid;
  v_found integer;
  v_refused jsonb;
  v_pending_limit integer;
  v_attachment private.attachment;
  v_ids uuid[];
  v_groups text[];
begin
  if v_uid is null then
    raise exception 'not authenticated'
      using errcode = '42501', hint = 'Sign in before sending messages.';
  end if;
  if p_group_jids is null or pg_catalog.cardinality(p_group_jids) = 0 then
    raise exception 'group_jids is empty'
      using errcode = '22023', hint = 'List the JIDs of the groups to send to.';
  end if;
  if pg_catalog.cardinality(p_group_jids) > 256 then
    raise exception 'too many groups: % (at most 256 a call)', pg_catalog.cardinality(p_group_jids)
      using errcode = 'PT413', hint = 'Split the groups into calls of at most 256.';
  end if;
  select j into v_bad from pg_catalog.unnest(p_group_jids) as u(j)
  where j is null or char_length(j) > 64 or j !~ '^[0-9]+(-[0-9]+)?@g\.us$' limit 1;
  if found then
    raise exception 'invalid group_jid: %', private.echo(v_bad)
      using errcode = '22023', hint = 'A group JID looks like 120363025246125888@g.us.';
  end if;
  select j into v_bad from pg_catalog.unnest(p_group_jids) as u(j) group by j having count(*) > 1 limit 1;
  if found then
    raise exception 'group % is listed twice', v_bad
      using errcode = '22023', hint = 'List each group once.';
  end if;
  v_content := private.check_message_input(p_content, p_attachment_bucket, p_attachment_path, p_send_at);

  if p_client_msg_id is not null then
    v_batch := private.batch_id_for(v_uid, p_client_msg_id);
    select count(*) into v_found from public.messages m where m.batch_id = v_batch;
    if v_found > 0 then
      if v_found <> pg_catalog.cardinality(p_group_jids) or exists (
           select 1 from public.messages m
           where m.batch_id = v_batch
             and (m.group_jid <> all (p_group_jids) or m.content is distinct from v_content
                  or m.attachment_bucket is distinct from p_attachment_bucket
                  or m.attachment_path is distinct from p_attachment_path
                  or m.send_at is distinct from p_send_at)) then
        raise exception 'client_msg_id % was already used for a different message', p_client_msg_id
          using errcode = 'PT422', hint = 'Use a new client_msg_id for each new message.';
      end if;
      return query select m.* from public.messages m where m.batch_id = v_batch
                   order by pg_catalog.array_position(p_group_jids, m.group_jid::text);
      return;
    end if;
    if exists (select 1 from public.messages m
               where m.sender_id = v_uid and m.client_msg_id = p_client_msg_id) then
      raise exception 'client_msg_id % was already used for a different message', p_client_msg_id
        using errcode = 'PT422', hint = 'Use a new client_msg_id for each new message.';
    end if;
  else
    v_batch := pg_catalog.gen_random_uuid();
  end if;

  select u.email into v_email from auth.users u where u.id = v_uid;
  if not found then
    raise exception 'not authenticated: the user no longer exists'
      using errcode = '42501', hint = 'Sign in again.';
  end if;

  -- Every group, in the order given; the group quota is one of the reasons.
  v_pending_limit := (select l.group_pending from public.send_limits l);
  select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
           'group_jid', j.jid, 'code', coalesce(r.code, 'PT429'),
           'message', coalesce(r.message, pg_catalog.format(
             'group %s has %s messages waiting to be sent (at most %s)', j.jid, v_pending_limit, v_pending_limit)))
         order by j.n)
  into v_refused
  from pg_catalog.unnest(p_group_jids) with ordinality as j(jid, n)
  cross join lateral private.group_refusal(v_uid, v_admin, j.jid) r
  where r.code is not null
     or (p_send_at is null and private.group_is_full(j.jid, v_pending_limit));
  if v_refused is not null then
    raise exception 'cannot send to % of % groups: %', pg_catalog.jsonb_array_length(v_refused),
                    pg_catalog.cardinality(p_group_jids),
                    private.echo((select pg_catalog.string_agg((e ->> 'group_jid') || ' (' || (e ->> 'code') || ')', ', ')
                                  from pg_catalog.jsonb_array_elements(v_refused) e))
      using errcode = 'PT424', detail = v_refused::text,
            hint = 'Nothing was sent. Leave out or fix the listed groups (detail: each group''s code and reason), then retry.';
  end if;
  if p_attachment_path is not null then
    v_attachment := private.check_attachment(p_attachment_bucket, p_attachment_path);
  end if;
  perform private.check_sender_quota(v_uid, pg_catalog.cardinality(p_group_jids));

  with inserted as (
    insert into public.messages (
      group_jid, sender_id, sender_email, content, status, send_at, batch_id,
      attachment_bucket, attachment_path, attachment_kind, attachment_mime_type, attachment_size,
      attachment_file_name)
    select j.jid, v_uid, v_email, v_content,
           case when p_send_at is null then 'pending' else 'scheduled' end::public.message_status,
           p_send_at, v_batch, v_attachment.bucket, v_attachment.path, v_attachment.kind,
           v_attachment.mime_type, v_attachment.size, v_attachment.file_name
    from pg_catalog.unnest(p_group_jids) with ordinality as j(jid, n)
    order by j.n
    on conflict (batch_id, group_jid) where batch_id is not null do nothing
    returning id, group_jid
  )
  select pg_catalog.array_agg(i.id order by pg_catalog.array_position(p_group_jids, i.group_jid::text)),
         pg_catalog.array_agg(i.group_jid::text order by pg_catalog.array_position(p_group_jids, i.group_jid::text))
  into v_ids, v_groups
  from inserted i;

  if v_ids is null and p_client_msg_id is not null then
    -- A concurrent call with the same key inserted first and has committed: its rows, if
    -- they are the same request.
    return query select * from private.send_to_groups(
      p_group_jids, p_content, p_client_msg_id, p_attachment_bucket, p_attachment_path, p_send_at);
    return;
  end if;
  if pg_catalog.cardinality(v_ids) <> pg_catalog.cardinality(p_group_jids) then
    raise exception 'client_msg_id % was already used for a different message', p_client_msg_id
      using errcode = 'PT422', hint = 'Use a new client_msg_id for each new message.';
  end if;

  if p_send_at is not null then
    insert into private.scheduled_messages (message_id, group_jid, send_at)
    select i, g, p_send_at from unnest(v_ids, v_groups) as x(i, g);
  else
    if exists (select 1 from private.scheduled_messages s where s.send_at <= now()) then
      perform private.promote_scheduled(p_group_jids, null);
    end if;
    insert into pgmq.q_whatsapp_outbound (vt, message, headers)
    select clock_timestamp(), pg_catalog.jsonb_build_object('message_id', d.id),
           pg_catalog.jsonb_build_object('x-pgmq-group', d.group_jid)
    from unnest(v_ids, v_groups) with ordinality as d(id, group_jid, n)
    order by d.n;
  end if;
  return query select m.* from public.messages m where m.id = any (v_ids)
               order by pg_catalog.array_position(p_group_jids, m.group_jid::text);
end
$$;

-- Takes back a scheduled message before it falls due: its sender or an admin. Anyone else is
-- told it does not exist (as for a message they cannot see). Once queued it is too late: the
-- poller may be sending it.
create function private.cancel_message(p_id uuid) returns public.messages
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_uid uuid := auth.uid();
  v_admin boolean := coalesce(auth.jwt() -> 'app_metadata' ->> 'role', '') = 'admin';
  v_email varchar;
  v_msg public.messages;
begin
  if v_uid is null then
    raise exception 'not authenticated'
      using errcode = '42501', hint = 'Sign in before canceling messages.';
  end if;
  select u.email into v_email from auth.users u where u.id = v_uid;
  if not found then
    raise exception 'not authenticated: the user no longer exists'
      using errcode = '42501', hint = 'Sign in again.';
  end if;
  select * into v_msg from public.messages m where m.id = p_id;
  if not found or (not v_admin and v_msg.sender_id is distinct from v_uid) then
    raise exception 'message not found: %', p_id
      using errcode = 'PT404', hint = 'Only its sender or an admin can cancel a message.';
  end if;
  -- Taking its schedule row decides between a cancel and a promotion of the same message:
  -- whichever deletes it first wins (a promotion holding it makes this wait, then find none).
  delete from private.scheduled_messages s where s.message_id = p_id;
  if found then
    update public.messages m
    set status = 'canceled', error_log = pg_catalog.format('canceled by %s', coalesce(v_email, v_uid::text))
    where m.id = p_id and m.status = 'scheduled'
    returning * into v_msg;
    if found then
      return v_msg;
    end if;
  end if;
  select * into v_msg from public.messages m where m.id = p_id;
  raise exception 'message % is not scheduled: it is %', p_id, v_msg.status
    using errcode = 'PT409', hint = 'Only a scheduled message can be canceled, before it falls due.';
end
$$;

-- plpgsql, not sql: a non-inlined SQL function is planned again on every call. PostgREST sees
-- one function per name: the three-argument send_message is gone, its calls match this one.
create function public.send_message(
  group_jid text, content text, client_msg_id uuid default null,
  attachment_bucket text default null, attachment_path text default null,
  reply_to uuid default null, mentions text[] default null, send_at timestamptz default null
) returns public.messages
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  return private.send_message(group_jid, content, client_msg_id, attachment_bucket,
                              attachment_path, reply_to, mentions, send_at);
end
$$;
comment on function public.send_message(text, text, uuid, text, text, uuid, text[], timestamptz) is
  'Queue a WhatsApp message to a group the caller may post to: text, an attachment from Storage (content is its caption), a reply, mentions, or scheduled (send_at). Returns the messages row (pending, or scheduled).';

create function public.send_to_groups(
  group_jids text[], content text, client_msg_id uuid default null,
  attachment_bucket text default null, attachment_path text default null,
  send_at timestamptz default null
) returns setof public.messages
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  return query select * from private.send_to_groups(group_jids, content, client_msg_id,
                                                     attachment_bucket, attachment_path, send_at);
end
$$;
comment on function public.send_to_groups(text[], text, uuid, text, text, timestamptz) is
  'Queue one message to many groups, all or nothing: one messages row per group with a shared batch_id.';

create function public.cancel_message(id uuid) returns public.messages
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  return private.cancel_message(id);
end
$$;
comment on function public.cancel_message(uuid) is
  'Cancel a scheduled message before it falls due (its sender or an admin). Returns the row (canceled).';

-- TTL from send_at: a scheduled message has its whole TTL once it falls due.
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
                        and m.status in ('pending', 'sending'))
    for update of q skip locked
  ) d;
  if v_done is not null then  -- the archive's delete and insert cost a third of a read
    perform private.archive_outbound(v_done);
  end if;
  select array_agg(m.id), array_agg(o.msg_id)
  into v_ids, v_msg_ids
  from (
    select x.msg_id, (x.message ->> 'message_id')::uuid as message_id
    from pgmq.q_whatsapp_outbound x
    where x.msg_id = any(v_window)
      and x.enqueued_at <= clock_timestamp() - make_interval(secs => p_ttl)
      and x.vt <= clock_timestamp()
    for update skip locked
  ) o
  join public.messages m on m.id = o.message_id
  where coalesce(m.send_at, m.created_at) <= now() - make_interval(secs => p_ttl)
    and m.status in ('pending', 'sending');
  if v_ids is not null then
    perform private.fail_outbound(
      v_ids, v_msg_ids,
      array_fill(format('expired: not sent within %s s (its WhatsApp session was not connected)',
                        p_ttl), array[cardinality(v_ids)]),
      false);
  end if;
end
$$;

-- The job carries what the poller needs beyond the text, `details` (null for plain text):
--   {"attachment": {"bucket", "path", "kind": "image"|"document", "mime_type", "size",
--                   "file_name"},
--    "reply_to": {"message_id", "wa_message_id", "content", "attachment_kind",
--                 "sender": our account's phone JID, "sender_lid": its LID},
--    "mentions": [{"jid", "lid"}, ...] | {"everyone": true}}
-- with only the keys that apply. The quoted message was sent by our own account: the group's
-- session's (wa_jid, wa_lid), as whatsmeow's quote needs its sender.
alter type private.outbound_job add attribute details jsonb;

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
  -- The TTL counts from send_at for a scheduled message.
  select coalesce(array_agg(row(
         b.msg_id, b.message_id, m.group_jid::text, g.session_id, m.content, m.attempts,
         case
           when m.id is null or m.status not in ('pending', 'sending') then 'done'
           when coalesce(e.msg_id < b.msg_id, false) then 'back'
           when not (g.session_id = any(p_sessions) and s.lease_owner = p_me
                     and s.lease_expires_at > now()) then 'back'
           when coalesce(m.send_at, m.created_at) <= now() - make_interval(secs => p_ttl) then 'fail'
           when not g.is_active then 'fail'
           when g.is_readonly then 'fail'
           else 'send'
         end,
         case
           when coalesce(m.send_at, m.created_at) <= now() - make_interval(secs => p_ttl) then
             format('expired: not sent within %s s (its WhatsApp session was not connected)',
                    p_ttl)
           when not g.is_active then 'group is inactive: the WhatsApp account left it'
           when g.is_readonly then format('group is read-only: %s', g.readonly_reason)
         end)::private.outbound_settling), '{}')
  into v_batch
  from unnest(p_msg_ids, p_message_ids) as b(msg_id, message_id)
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
    where m.id = b.message_id and b.outcome = 'back' and m.status = 'sending';
    perform private.retime_outbound(v_back, 0);
  end if;

  return query
  with claimed as (
    update public.messages m
    set status = 'sending'
    from unnest(v_batch) b
    where m.id = b.message_id and b.outcome = 'send' and m.status in ('pending', 'sending')
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
  order by b.msg_id;
end
$$;

-- The take promotes what fell due first, so a scheduled message needs no daemon of its own: it
-- goes on the queue at the poller's next read (every WA_POLL_INTERVAL at the latest) and is
-- read by the same take. Otherwise as before.
create or replace function private.take_outbound(
  p_me text,
  p_sessions uuid[],
  p_rooms integer[],
  p_held bigint[],
  p_vt integer,
  p_qty integer,
  p_ttl double precision
) returns setof private.outbound_job
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_jids text[];
  v_session_ids uuid[];
  v_rooms integer[];
  v_heads bigint[];
  v_share integer;
  v_picked bigint[];
  v_locked bigint[];
  v_msg_ids bigint[];
  v_message_ids uuid[];
begin
  perform private.promote_scheduled(null, p_ttl);
  perform private.expire_outbound(p_ttl);

  select coalesce(array_agg(h.jid order by h.head), '{}'), coalesce(array_agg(h.session_id order by h.head), '{}'),
         coalesce(array_agg(h.room order by h.head), '{}'), coalesce(array_agg(h.head order by h.head), '{}')
  into v_jids, v_session_ids, v_rooms, v_heads
  from (
    select g.jid::text as jid, g.session_id, r.room, head.msg_id as head
    from unnest(p_sessions, p_rooms) as r(session_id, room)
    join public.whatsapp_sessions s
      on s.id = r.session_id and s.lease_owner = p_me and s.lease_expires_at > now()
    join public.whatsapp_groups g on g.session_id = r.session_id
    cross join lateral (
      select q.msg_id, q.vt
      from pgmq.q_whatsapp_outbound q
      where (q.headers ->> 'x-pgmq-group') = g.jid::text
      order by q.msg_id
      limit 1
    ) head
    where r.room > 0 and head.vt <= clock_timestamp()
  ) h;
  if cardinality(v_jids) = 0 then
    return;
  end if;
  v_share := ceil(p_qty::numeric / cardinality(v_jids))::integer;

  select coalesce(array_agg(c.msg_id order by c.rank_in_group, c.head), '{}')
  into v_picked
  from (
    select t.msg_id, t.rank_in_group, t.head
    from (
      select v.msg_id, v.rank_in_group, h.head, h.room,
             row_number() over (partition by h.session_id
                                order by v.rank_in_group, h.head) as rank_in_session
      from unnest(v_jids, v_session_ids, v_rooms, v_heads) as h(jid, session_id, room, head)
      cross join lateral (
        select w.msg_id, row_number() over (order by w.msg_id) as rank_in_group
        from (
          select q.msg_id, q.vt
          from pgmq.q_whatsapp_outbound q
          where (q.headers ->> 'x-pgmq-group') = h.jid
          order by q.msg_id
          limit least(v_share, h.room)
        ) w
        where w.vt <= clock_timestamp()
      ) v
    ) t
    where t.rank_in_session <= t.room
    order by t.rank_in_group, t.head
    limit p_qty
  ) c;

  if cardinality(v_picked) = 0 then
    return;
  end if;

  select coalesce(array_agg(l.msg_id), '{}') into v_locked
  from (
    select q.msg_id from pgmq.q_whatsapp_outbound q
    where q.msg_id = any(v_picked)
    for update skip locked
  ) l;

  with leased as (
    -- pgmq 1.5.1's columns: on a newer pgmq, last_read_at stays null (nothing here reads it).
    update pgmq.q_whatsapp_outbound m
    set vt = clock_timestamp() + make_interval(secs => least(greatest(p_vt, 0), 3600)),
        read_ct = m.read_ct + 1
    where m.msg_id = any(v_locked) and m.vt <= clock_timestamp()
    returning m.msg_id, (m.message ->> 'message_id')::uuid as message_id
  )
  select coalesce(array_agg(l.msg_id), '{}'), coalesce(array_agg(l.message_id), '{}')
  into v_msg_ids, v_message_ids
  from leased l;

  if cardinality(v_msg_ids) > 0 then
    return query select * from private.claim_outbound(
      v_msg_ids, v_message_ids, p_sessions, p_me, p_held, p_ttl);
  end if;
end
$$;

-- Who may execute what (see the function privileges migration): every new function is revoked
-- from everyone, then exactly what each role calls is granted. The RPCs' bodies run as their
-- owner and are called by their public wrappers as the caller; the helpers run only inside
-- them. take_outbound and claim_outbound keep their grants (create or replace).
revoke execute on function
  private.attachment_limit(text),
  private.caller_storage_object(text, text),
  private.check_attachment(text, text),
  private.resolve_mentions(text, text[]),
  private.check_reply(uuid, boolean, text, uuid),
  private.check_send_at(timestamptz),
  private.group_refusal(uuid, boolean, text),
  private.check_sender_quota(uuid, integer),
  private.group_is_full(text, integer),
  private.promote_scheduled(text[], double precision),
  private.batch_id_for(uuid, uuid),
  private.same_message_or_raise(public.messages, uuid, text, text, text, text, uuid, timestamptz),
  private.check_message_input(text, text, text, timestamptz),
  private.send_message(text, text, uuid, text, text, uuid, text[], timestamptz),
  private.send_to_groups(text[], text, uuid, text, text, timestamptz),
  private.cancel_message(uuid),
  public.send_message(text, text, uuid, text, text, uuid, text[], timestamptz),
  public.send_to_groups(text[], text, uuid, text, text, timestamptz),
  public.cancel_message(uuid)
  from public, anon, authenticated, service_role;
grant execute on function
  private.send_message(text, text, uuid, text, text, uuid, text[], timestamptz),
  private.send_to_groups(text[], text, uuid, text, text, timestamptz),
  private.cancel_message(uuid),
  public.send_message(text, text, uuid, text, text, uuid, text[], timestamptz),
  public.send_to_groups(text[], text, uuid, text, text, timestamptz),
  public.cancel_message(uuid)
  to authenticated, service_role;
