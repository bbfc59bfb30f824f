-- Read what a write must check, in one round trip, under the caller's WATCH.
-- KEYS[1] data hash, KEYS[2] meta hash, KEYS[3] change stream, KEYS[4] (optional) a delivery's
-- idempotency key.
-- Returns {meta as a flat field/value list, TYPE of data, TYPE of the stream, EXISTS of KEYS[4]}.
-- (HGETALL fails on a meta key of the wrong type, before anything is queued.)
local seen = 0
if #KEYS >= 4 then seen = redis.call('EXISTS', KEYS[4]) end
return {redis.call('HGETALL', KEYS[2]), redis.call('TYPE', KEYS[1]).ok, redis.call('TYPE', KEYS[3]).ok, seen}
