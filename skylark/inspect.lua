-- Read what a write must check, in one round trip, under the caller's WATCH.
-- KEYS[1] data hash, KEYS[2] meta hash, KEYS[3] change stream.
-- Returns {meta as a flat field/value list, TYPE of data, TYPE of the stream}.
-- (HGETALL fails on a meta key of the wrong type, before anything is queued.)
return {redis.call('HGETALL', KEYS[2]), redis.call('TYPE', KEYS[1]).ok, redis.call('TYPE', KEYS[3]).ok}
