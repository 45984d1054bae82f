-- A sale the control unit refused (or that was quarantined) before its number could have
-- reached KRA gives its invcNo back: the sales queued behind it move down by one, so the
-- branch's sequence at KRA stays gap-free (kra-protocol.md §6: a refused number is not
-- consumed). The refused sale keeps the number it was refused under here; its invc_no
-- becomes -id, out of the sequence.
ALTER TABLE sales ADD COLUMN refused_invc_no INTEGER;
