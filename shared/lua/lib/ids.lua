-- Stream entry ids, `<ms>-<seq>`, compared as numbers (never as strings).

local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- Is `a` a later id than `b`?
local function id_after(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  return ams > bms or (ams == bms and aseq > bseq)
end

-- The smallest id after `id` (XTRIM MINID keeps ids from it on).
local function id_successor(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms .. '-' .. string.format('%d', tonumber(seq) + 1)
end
