-- Argo CD health of an FheBatch (key: resource.customizations.health.fhe.coprocessor.dev_FheBatch).
-- The operator recomputes status.phase from Jobs and the database; this maps it onto
-- Argo CD's health, and does not call a batch healthy before the operator has seen
-- its current spec (observedGeneration).
hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "the operator has not observed the current spec yet"
  return hs
end
local message = status.message or status.phase
if status.phase == "Succeeded" then
  hs.status = "Healthy"
elseif status.phase == "Failed" then
  hs.status = "Degraded"
elseif status.phase == "Suspended" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
hs.message = message
return hs
