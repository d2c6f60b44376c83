-- Rate and concurrency limits an agent carries (requests and tokens per minute, calls in
-- flight), as a JSON object: {"rpm": 60, "tpm": 100000, "concurrent": 4}; `{}` is none.
ALTER TABLE agents ADD COLUMN limits JSONB NOT NULL DEFAULT '{}';
