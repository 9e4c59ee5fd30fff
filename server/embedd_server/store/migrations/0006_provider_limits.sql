-- Per-provider settings for OpenAI-compatible servers, and what the service learned about them.
ALTER TABLE embedding_providers
    -- The vector size of default_model when it is outside the catalog.
    ADD COLUMN dimensions             integer CHECK (dimensions BETWEEN 1 AND 16000),
    -- The user's settings; NULL = learned.
    ADD COLUMN max_inputs_per_request integer CHECK (max_inputs_per_request >= 1),
    ADD COLUMN max_concurrency        integer CHECK (max_concurrency >= 1),
    -- Learned by the embedder (providers/batching.InputLimit, providers/limiter AIMD).
    ADD COLUMN learned_max_inputs     integer CHECK (learned_max_inputs >= 1),
    ADD COLUMN learned_concurrency    integer CHECK (learned_concurrency >= 1);
