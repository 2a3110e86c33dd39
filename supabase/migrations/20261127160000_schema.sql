-- Tables of the outbox: sessions, groups (JID is the key), permissions and the message log.

-- What the project needs, checked first so that a project without it changes nothing.
-- pgmq: the extension on Supabase; on plain PostgreSQL `wa-poller db bootstrap` has already
-- installed pgmq's SQL-only form, so the extension is only created when pgmq is absent.
-- The project uses pgmq 1.5.1's surface only (what hosted Supabase ships): the queue table with
-- its `headers` column, written and read by the project's own functions.
do $$
declare
  v_version text;
begin
  if to_regclass('pgmq.meta') is null then
    create extension if not exists pgmq;
  end if;
  select e.extversion into v_version from pg_catalog.pg_extension e where e.extname = 'pgmq';
  -- Message headers (the per-group key) came with pgmq 1.5; the SQL-only install has no
  -- extension row, so its surface is what tells.
  if (v_version is not null
      and pg_catalog.string_to_array(pg_catalog.split_part(v_version, '-', 1), '.')::int[] < '{1,5,1}')
     or (v_version is null
         and pg_catalog.to_regprocedure('pgmq.send(text, jsonb, jsonb, integer)') is null) then
    raise exception 'pgmq % is too old: this project needs pgmq 1.5.1 or newer (message headers)',
                    coalesce(v_version, '(a SQL-only install without message headers)')
      using errcode = '0A000',
            hint = 'On Supabase, upgrade the project''s Postgres (Settings > Infrastructure): its images ship pgmq 1.5.1 or newer. Elsewhere: alter extension pgmq update, or drop pgmq and run wa-poller db bootstrap, which installs a current one.';
  end if;
end
$$;

create schema if not exists private;
revoke all on schema private from public;
-- Who may execute the functions in private is set in one place: 20261127220000_function_privileges.sql.

create type public.session_status as enum ('scanning', 'connecting', 'connected', 'disconnected');
create type public.message_status as enum ('pending', 'sending', 'sent', 'delivered', 'read', 'failed');

create function private.touch_updated_at() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  new.updated_at := now();
  return new;
end
$$;

-- Blank: nothing a reader would see. Unicode White_Space, controls (Cc) and format characters
-- (Cf), plus the fillers and selectors that render as nothing (Hangul fillers, the blank braille
-- pattern, variation selectors). One rule for the table's check and for send_message's error.
create function private.is_blank(p_text text) returns boolean
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select p_text is null or p_text ~ (
    '^['
    || '\u0001-\u0020\u007f-\u00a0\u00ad\u1680\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f'
    || '\u3000\ufeff\ufff9-\ufffb\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e'
    || '\u115f\u1160\u3164\uffa0\u2800\ufe00-\ufe0f'
    || '\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a'
    || '\U000e0001\U000e0020-\U000e007f\U000e0100-\U000e01ef'
    || ']*$')
$$;

-- One row per admin WhatsApp number. qr_code and config are for admins only (see RLS).
create table public.whatsapp_sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid references auth.users (id) on delete set null,
  phone_number varchar(32),
  status public.session_status not null default 'disconnected',
  status_reason text,
  qr_code text,
  config jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index whatsapp_sessions_user_id_idx on public.whatsapp_sessions (user_id);
comment on column public.whatsapp_sessions.updated_at is 'Heartbeat: the poller holding the session bumps it.';

-- WhatsApp groups keyed by their JID: no surrogate UUIDs to get out of sync.
create table public.whatsapp_groups (
  jid varchar(64) primary key
    constraint whatsapp_groups_jid_format check (jid ~ '^[0-9]+(-[0-9]+)?@g\.us$'),
  name varchar(255),
  session_id uuid references public.whatsapp_sessions (id) on delete set null,
  participants jsonb not null default '[]'::jsonb,
  is_active boolean not null default true,
  is_readonly boolean not null default false,
  readonly_reason text,
  last_synced timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint whatsapp_groups_readonly_has_reason check (not is_readonly or readonly_reason is not null)
);
create index whatsapp_groups_session_id_idx on public.whatsapp_groups (session_id);

create table public.employee_groups (
  id uuid primary key default gen_random_uuid(),
  name varchar(255) not null unique,
  created_at timestamptz not null default now()
);

create table public.employee_group_members (
  employee_group_id uuid not null references public.employee_groups (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  created_at timestamptz not null default now(),
  primary key (employee_group_id, user_id)
);
create index employee_group_members_user_id_idx on public.employee_group_members (user_id);

create table public.group_assignments (
  id uuid primary key default gen_random_uuid(),
  group_jid varchar(64) not null references public.whatsapp_groups (jid) on delete cascade,
  employee_group_id uuid not null references public.employee_groups (id) on delete cascade,
  created_at timestamptz not null default now(),
  constraint group_assignments_unique unique (group_jid, employee_group_id)
);
create index group_assignments_employee_group_id_idx on public.group_assignments (employee_group_id);

-- The audit log of every message, and the row whose status the browser watches. Its group
-- reference has no cascade: a group with messages can be neither deleted nor re-keyed.
create table public.messages (
  id uuid primary key default gen_random_uuid(),
  wa_message_id varchar(128),
  group_jid varchar(64) not null references public.whatsapp_groups (jid),
  -- Who sent it, kept as a value and not a reference: the audit trail outlives the account.
  sender_id uuid,
  sender_email varchar(255),
  -- Length in code points (char_length), as send_message counts it.
  content text not null
    constraint messages_content_not_blank check (not private.is_blank(content))
    constraint messages_content_length check (char_length(content) <= 65536),
  status public.message_status not null default 'pending',
  error_log text,
  client_msg_id uuid,
  attempts integer not null default 0 check (attempts >= 0),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  sent_at timestamptz,
  delivered_at timestamptz,
  read_at timestamptz
);
-- Idempotency key: one row per (sender, client_msg_id). Partial, so calls without a key do not
-- pay for an index entry.
create unique index messages_sender_client_msg_id_key on public.messages (sender_id, client_msg_id)
  where client_msg_id is not null;
-- The per-sender quota counts a sender's last minute.
create index messages_sender_id_created_at_idx on public.messages (sender_id, created_at);
create index messages_group_jid_created_at_idx on public.messages (group_jid, created_at);
create index messages_wa_message_id_idx on public.messages (wa_message_id) where wa_message_id is not null;
create index messages_unfinished_idx on public.messages (group_jid, status)
  where status in ('pending', 'sending', 'failed');

create trigger whatsapp_sessions_touch before update on public.whatsapp_sessions
  for each row execute function private.touch_updated_at();
create trigger whatsapp_groups_touch before update on public.whatsapp_groups
  for each row execute function private.touch_updated_at();
create trigger messages_touch before update on public.messages
  for each row execute function private.touch_updated_at();
