-- Supabase compatibility layer, part 2: the `realtime` schema as Supabase Realtime's own tenant
-- migrations leave it, reduced to what this project and Realtime's authorization check use:
-- `realtime.messages`, `realtime.topic()`, `realtime.send()` and the grants Realtime gives.
--
-- On Supabase the Realtime server creates all of this; here it is only made when absent, by a
-- superuser, right after sql/supabase_compat.sql. Every statement is idempotent.
--
-- What differs from a Supabase project, and why:
-- * Realtime's janitor creates one partition of realtime.messages per day (yesterday to three
--   days ahead) and drops those older than 72 hours. There is no janitor here, so one DEFAULT
--   partition takes every row: inserts never fail for want of a partition, and nothing is
--   cleaned up (a test or development database does not live long enough to matter).
-- * On Supabase, `postgres` may create policies on realtime.messages through supautils'
--   policy grants. Plain PostgreSQL has no such thing, so `postgres` is made a member of the
--   table's owner role, `supabase_realtime_admin`, as Realtime itself did before supautils
--   (and still does where supautils does not cover realtime.messages).
-- * The functions carry `set search_path = pg_catalog, pg_temp` (Realtime's do not), as every
--   function of this project does.

do $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'supabase_realtime_admin') then
    create role supabase_realtime_admin nologin noinherit noreplication;
  end if;
end
$$;

create schema if not exists realtime;
do $$
begin
  -- On Supabase the schema is the superuser's, as the other platform schemas.
  if exists (select 1 from pg_catalog.pg_roles where rolname = 'supabase_admin') then
    alter schema realtime owner to supabase_admin;
  end if;
end
$$;

-- Realtime's messages: one row per Broadcast sent from the database, and the rows its
-- authorization check inserts (and rolls back) to try a client's policies. Columns, types and
-- order as Realtime's migrations leave them.
create table if not exists realtime.messages (
  topic text not null,
  extension text not null,
  payload jsonb,
  event text,
  private boolean default false,
  updated_at timestamp without time zone not null default now(),
  inserted_at timestamp without time zone not null default now(),
  id uuid not null default gen_random_uuid(),
  binary_payload bytea,
  constraint messages_pkey primary key (id, inserted_at)
) partition by range (inserted_at);

do $$
begin
  if not exists (select 1 from pg_catalog.pg_constraint
                 where conrelid = 'realtime.messages'::regclass
                   and conname = 'messages_payload_exclusive') then
    alter table realtime.messages add constraint messages_payload_exclusive
      check (payload is null or binary_payload is null) not valid;
  end if;
end
$$;

create table if not exists realtime.messages_default partition of realtime.messages default;

-- Realtime's replay index (private broadcasts by time).
create index if not exists messages_inserted_at_topic_index
  on realtime.messages (inserted_at desc, topic)
  where extension = 'broadcast' and private is true;

alter table realtime.messages enable row level security;
alter table realtime.messages owner to supabase_realtime_admin;
alter table realtime.messages_default owner to supabase_realtime_admin;

-- The topic of the channel being joined: Realtime sets `realtime.topic` before it tries a
-- client's policies, and realtime.send sets it before its insert.
create or replace function realtime.topic() returns text
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select nullif(pg_catalog.current_setting('realtime.topic', true), '')::text
$$;

-- Broadcast from the database: one row in realtime.messages (extension 'broadcast'), which
-- Realtime sends to the topic's subscribers. An `id` is added to the payload when it has none.
-- As in Realtime, SECURITY INVOKER (the caller needs INSERT on realtime.messages and must pass
-- its policies, or bypass them), and a failure never aborts the caller: it becomes a WARNING
-- and the message is not sent.
create or replace function realtime.send(
  payload jsonb, event text, topic text, private boolean default true
) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id uuid;
  v_payload jsonb;
begin
  begin
    v_id := pg_catalog.gen_random_uuid();
    v_payload := case when payload ? 'id' then payload
                      else pg_catalog.jsonb_set(payload, '{id}', pg_catalog.to_jsonb(v_id)) end;
    perform pg_catalog.set_config('realtime.topic', topic, true);
    insert into realtime.messages (id, payload, event, topic, private, extension)
    values (v_id, v_payload, event, topic, private, 'broadcast');
  exception when others then
    raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
  end;
end
$$;

alter function realtime.topic() owner to supabase_realtime_admin;
alter function realtime.send(jsonb, text, text, boolean) owner to supabase_realtime_admin;

-- The grants Realtime's migrations give.
grant all on schema realtime to supabase_realtime_admin;
grant usage on schema realtime to anon, authenticated, service_role;
grant select, insert, update on realtime.messages to anon, authenticated, service_role;
grant execute on function realtime.topic(), realtime.send(jsonb, text, text, boolean)
  to anon, authenticated, service_role;

do $$
begin
  if exists (select 1 from pg_catalog.pg_roles where rolname = 'postgres') then
    grant usage on schema realtime to postgres with grant option;
    grant select, insert, update on realtime.messages to postgres;
    grant execute on function realtime.topic(), realtime.send(jsonb, text, text, boolean)
      to postgres;
    -- Lets `postgres` (not a superuser on Supabase) create policies on realtime.messages.
    grant supabase_realtime_admin to postgres;
  end if;
end
$$;
