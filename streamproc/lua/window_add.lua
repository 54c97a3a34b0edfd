-- window_add.lua: add one consumer process's counts since its last flush to a dashboard window.
-- Nothing is written once the pipeline's streams are gone (FLUSHALL, a server that lost its data):
-- statistics must never re-create keys behind an operator's back.
-- KEYS[1] the window's hash   KEYS[2] a stage stream (it exists while the pipeline does)
-- ARGV[1] the window's time to live (s), then pairs: field, increment
-- Returns 1 when added, 0 when the stream is gone.
if redis.call("EXISTS", KEYS[2]) == 0 then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call("HINCRBY", KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call("EXPIRE", KEYS[1], ARGV[1])
return 1
