-- Supabase compatibility layer for a plain PostgreSQL server.
--
-- Reproduces what a Supabase project already has, so that the migrations and the tests face
-- the same roles, privilege model, auth helpers and default privileges as on Supabase (facts
-- from supabase/postgres's init scripts and migrations). `wa-poller db bootstrap` runs this
-- file, as a superuser, only when the database has no `auth.users` (i.e. it is not a Supabase
-- database). Every statement is idempotent. The `realtime` schema lives in its own file.
--
-- On Supabase `supabase_admin` is the superuser and `postgres` is not: migrations run as
-- `postgres`, which owns what they create. Here `postgres` gets the same attributes and grants,
-- except that a `postgres` that is this cluster's bootstrap superuser or the role running this
-- file stays a superuser (it cannot be demoted; the grants still apply).

-- Roles are cluster-wide: create only the missing ones, as Supabase's init scripts leave them.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'supabase_admin') then
    -- NOLOGIN here: it exists to own what Supabase's superuser owns, not to be logged in as.
    create role supabase_admin nologin superuser createdb createrole replication bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'supabase_auth_admin') then
    create role supabase_auth_admin nologin noinherit createrole;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin inherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin inherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin inherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'postgres') then
    create role postgres login nosuperuser createdb createrole replication bypassrls;
  elsif current_user <> 'postgres'
    and (select oid from pg_roles where rolname = 'postgres') <> 10 then
    -- The demote-postgres migration's attributes.
    alter role postgres login nosuperuser createdb createrole replication bypassrls;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;
-- postgres may act as the API roles (Supabase grants these to it; with ADMIN OPTION from 16 on).
do $$
begin
  if current_setting('server_version_num')::int >= 160000 then
    execute 'grant anon, authenticated, service_role to postgres with admin option';
  else
    grant anon, authenticated, service_role to postgres;
  end if;
end
$$;
grant pg_monitor, pg_read_all_data, pg_signal_backend to postgres;

-- The database: Supabase's postgres has ALL on it (CREATE for new schemas among them).
do $$
begin
  execute format('grant all on database %I to postgres', current_database());
end
$$;

-- extensions: owned by the superuser; postgres may create in it and gets everything in it.
create schema if not exists extensions;
alter schema extensions owner to supabase_admin;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
grant all on schema extensions to postgres;
grant all on all tables in schema extensions to postgres with grant option;
grant all on all routines in schema extensions to postgres with grant option;
grant all on all sequences in schema extensions to postgres with grant option;
alter default privileges for role supabase_admin in schema extensions
  grant all on tables to postgres with grant option;
alter default privileges for role supabase_admin in schema extensions
  grant all on routines to postgres with grant option;
alter default privileges for role supabase_admin in schema extensions
  grant all on sequences to postgres with grant option;

-- auth: the schema is the superuser's, its tables and helpers supabase_auth_admin's. postgres
-- may use the schema (not create in it) and has ALL on its tables, sequences and routines.
create schema if not exists auth;
alter schema auth owner to supabase_admin;
grant usage on schema auth to anon, authenticated, service_role, postgres;
grant all on schema auth to supabase_auth_admin;
revoke create on schema auth from postgres;

-- The columns of Supabase's auth.users that this project and its tests use.
create table if not exists auth.users (
  instance_id uuid,
  id uuid primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255) unique,
  phone text unique,
  raw_app_meta_data jsonb not null default '{}'::jsonb,
  raw_user_meta_data jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
alter table auth.users owner to supabase_auth_admin;

-- The helpers read the claims that PostgREST puts in request.jwt.claims, exactly as Supabase's do.
create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

alter function auth.uid() owner to supabase_auth_admin;
alter function auth.role() owner to supabase_auth_admin;
alter function auth.email() owner to supabase_auth_admin;
alter function auth.jwt() owner to supabase_auth_admin;
grant execute on function auth.uid(), auth.role(), auth.email(), auth.jwt()
  to anon, authenticated, service_role;

grant all on all tables in schema auth to postgres;
grant all on all sequences in schema auth to postgres;
grant all on all routines in schema auth to postgres;
alter default privileges for role supabase_auth_admin in schema auth
  grant all on tables to postgres;
alter default privileges for role supabase_auth_admin in schema auth
  grant all on sequences to postgres;
alter default privileges for role supabase_auth_admin in schema auth
  grant all on routines to postgres;

-- storage: the Storage server's schema, empty here; postgres may use it, not create in it.
create schema if not exists storage;
alter schema storage owner to supabase_admin;
grant usage on schema storage to anon, authenticated, service_role;
grant usage on schema storage to postgres with grant option;
alter default privileges for role supabase_admin in schema storage
  grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema storage
  grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema storage
  grant all on sequences to postgres, anon, authenticated, service_role;

-- Storage's tables, as the Storage server's tenant migrations leave them (supabase/storage,
-- migrations/tenant: 0002 creates them, 0007 enables RLS on buckets, 0008, 0013/0014, 0016,
-- 0018 and 0025 add the columns, 0046/0049 grant them), reduced to the columns a project's SQL
-- reads: which bucket and name, who owns it, and `metadata` as the server writes it at upload
-- ({"eTag", "size", "mimetype", "cacheControl", "lastModified", "contentLength",
-- "httpStatusCode"}). Owned by supabase_storage_admin with RLS on and no policy: nobody but a
-- role that bypasses RLS reads an object until the project adds policies. On Supabase the
-- Storage server creates all of this; here it is made only when absent.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'supabase_storage_admin') then
    create role supabase_storage_admin nologin noinherit createrole noreplication;
  end if;
end
$$;
create table if not exists storage.buckets (
  id text primary key,
  name text not null,
  owner uuid,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  public boolean default false,
  avif_autodetection boolean default false,
  file_size_limit bigint,
  allowed_mime_types text[],
  owner_id text
);
create unique index if not exists bname on storage.buckets using btree (name);
create table if not exists storage.objects (
  id uuid primary key default gen_random_uuid(),
  bucket_id text constraint "objects_bucketId_fkey" references storage.buckets (id),
  name text,
  owner uuid,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  last_accessed_at timestamptz default now(),
  metadata jsonb,
  path_tokens text[] generated always as (string_to_array(name, '/')) stored,
  version text,
  owner_id text,
  user_metadata jsonb
);
create unique index if not exists bucketid_objname on storage.objects using btree (bucket_id, name);
comment on column storage.objects.owner is 'Field is deprecated, use owner_id instead';
comment on column storage.buckets.owner is 'Field is deprecated, use owner_id instead';
alter table storage.buckets enable row level security;
alter table storage.objects enable row level security;
alter table storage.buckets owner to supabase_storage_admin;
alter table storage.objects owner to supabase_storage_admin;
-- USAGE only: postgres is a member (below), and may not create in the schema, as on Supabase.
grant usage on schema storage to supabase_storage_admin;
grant all on storage.buckets, storage.objects to anon, authenticated, service_role;
grant all on storage.buckets, storage.objects to postgres with grant option;
-- On Supabase supautils' policy grants let `postgres` create policies on storage.objects (the
-- SQL editor's way to write Storage access rules); here it is a member of the tables' owner, as
-- with realtime.messages.
grant supabase_storage_admin to postgres;

-- public: Supabase's default privileges give the API roles everything on new objects, so that
-- RLS and explicit revokes, not missing grants, are what protect the data. They are set for
-- objects made by postgres (the migrations) and by supabase_admin.
grant usage on schema public to postgres, anon, authenticated, service_role;
do $$
begin
  -- On Supabase postgres owns the database, hence CREATE on public (owned by
  -- pg_database_owner); where another role owns this database, grant it outright.
  if not pg_has_role('postgres', (select datdba from pg_database
                                   where datname = current_database()), 'usage') then
    grant create on schema public to postgres;
  end if;
end
$$;
alter default privileges for role postgres in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on sequences to anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on sequences to postgres, anon, authenticated, service_role;
