-- Who queued the request: the subject of the token it carried (NULL on a public route, or for
-- requests queued before owners were recorded). Only they, or an admin, read its outcome.
ALTER TABLE deferred ADD COLUMN owner TEXT;
