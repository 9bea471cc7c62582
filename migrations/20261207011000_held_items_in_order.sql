-- A `for_each` step releases its next held items in creation order each time one ends. This
-- index gives them in that order, so a release reads only the items it releases instead of
-- sorting every held item of the step (thousands, for a long list).
create index tasks_run_held_idx on tasks (run_id, step, id) where held;
