-- Messages are pruned by age (`messages.retention`). They arrive in time order, so a BRIN index
-- finds the old ones; deleting one clears `tasks.message_id` of its tasks, which needs an index
-- to find them.
create index messages_received_at_idx on messages using brin (received_at);
create index tasks_message_idx on tasks (message_id) where message_id is not null;
