-- Rich messages, part 1: the statuses and columns that attachments, replies, mentions,
-- scheduled sends and fan-out need. The functions that use them are in the next migration:
-- a new enum value cannot be used in the transaction that adds it, and each migration is one
-- transaction.

-- `scheduled`: written, not queued yet (its job is put on the queue when it falls due), so it
-- ranks before `pending`. `canceled`: a scheduled message its sender or an admin took back
-- before it went; final like `failed`, but a status of its own: nothing went wrong, and the
-- failed_messages view and the poller's failure counts stay about failures.
alter type public.message_status add value if not exists 'scheduled' before 'pending';
alter type public.message_status add value if not exists 'canceled' after 'failed';

-- What the poller needs to send an attachment, fixed when the message is written (a later
-- change to the object in Storage does not change what was checked): the object, its kind
-- (WhatsApp's image or document message), its type, its size and the name the group sees.
-- A reply names the quoted message (a message of the same group that was sent); mentions
-- hold the resolved participants ([{"jid", "lid"}, ...]) or {"everyone": true}; send_at is
-- when a scheduled message falls due (null: at once); batch_id is shared by the rows of one
-- fan-out call.
alter table public.messages
  add column attachment_bucket text,
  add column attachment_path text,
  add column attachment_kind text,
  add column attachment_mime_type text,
  add column attachment_size bigint,
  add column attachment_file_name text,
  add column reply_to uuid references public.messages (id),
  add column mentions jsonb,
  add column send_at timestamptz,
  add column batch_id uuid,
  add constraint messages_attachment_complete check (
    (attachment_path is null and attachment_bucket is null and attachment_kind is null
     and attachment_mime_type is null and attachment_size is null
     and attachment_file_name is null)
    or (attachment_path is not null and attachment_bucket is not null
        and attachment_kind in ('image', 'document') and attachment_mime_type is not null
        and attachment_size >= 0 and attachment_file_name is not null)),
  add constraint messages_mentions_shape check (
    mentions is null or pg_catalog.jsonb_typeof(mentions) in ('array', 'object'));

-- An attachment's caption may be empty: content is then ''. Without one, the rule stays.
alter table public.messages drop constraint messages_content_not_blank;
alter table public.messages add constraint messages_content_not_blank
  check (attachment_path is not null or not private.is_blank(content));

create index messages_reply_to_idx on public.messages (reply_to) where reply_to is not null;
-- A fan-out's rows, and its retry's look-up: batch_id is derived from the sender and the
-- client key (see send_to_groups), one row per group.
create unique index messages_batch_id_group_jid_key on public.messages (batch_id, group_jid)
  where batch_id is not null;

comment on column public.messages.attachment_kind is
  'image or document: how WhatsApp shows the attachment (see send_message).';
comment on column public.messages.mentions is
  'Mentioned participants as synced, [{"jid", "lid"}], or {"everyone": true}.';
comment on column public.messages.send_at is
  'A scheduled message: when it falls due and is queued; its TTL counts from here.';
comment on column public.messages.batch_id is 'Shared by the rows of one send_to_groups call.';
