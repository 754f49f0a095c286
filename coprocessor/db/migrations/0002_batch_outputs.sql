-- A batch's published handles: the SNS stage squashes and uploads the nodes a graph
-- marks `output: true` (and, for listener-made batches, handles with an ACL row).
ALTER TABLE batch_computations ADD COLUMN is_output BOOLEAN NOT NULL DEFAULT false;

-- The SNS queue row names the batch that asked for it; a handle shared by two batches
-- is squashed and uploaded once.
CREATE INDEX pbs_computations_by_batch ON pbs_computations (batch_id);
