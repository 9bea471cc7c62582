-- The state of each node's RabbitMQ consumer (state, since, queue, last error), written by its
-- heartbeat loop when the state changes, for the cluster view. Null on nodes without a broker.
alter table nodes add column amqp_consumer jsonb;
