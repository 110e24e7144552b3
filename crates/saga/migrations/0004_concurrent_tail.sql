-- The steps of a concurrent tail (`Saga::concurrent_tail`) that succeeded, one bit per step
-- (bit n: step n); 0 for every other instance.
ALTER TABLE saga_instances ADD COLUMN done INTEGER NOT NULL DEFAULT 0;
