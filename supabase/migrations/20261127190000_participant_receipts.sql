-- Per-participant receipts of group messages, so the UI can show "delivered to N of M".
create table public.message_receipts (
  message_id uuid not null references public.messages (id) on delete cascade,
  participant text not null,
  delivered_at timestamptz,
  read_at timestamptz,
  primary key (message_id, participant)
);
alter table public.message_receipts enable row level security;

create policy "Members can read receipts of their groups' messages, admins all" on public.message_receipts
  for select to authenticated using (
    (select private.is_admin())
    or exists (select 1 from public.messages m
               where m.id = message_id and m.group_jid in (select private.my_group_jids())));
create policy "The poller can read message receipts" on public.message_receipts
  for select to wa_poller using (true);
create policy "The poller can record message receipts" on public.message_receipts
  for insert to wa_poller with check (true);
create policy "The poller can update message receipts" on public.message_receipts
  for update to wa_poller using (true) with check (true);

revoke all on public.message_receipts from anon;
revoke insert, update, delete, truncate, references, trigger on public.message_receipts
  from authenticated;
grant select, insert, update (delivered_at, read_at) on public.message_receipts to wa_poller;
