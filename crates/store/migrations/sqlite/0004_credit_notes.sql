-- Credit notes are sales with rcptTyCd R, numbered from the same gap-free invcNo sequence.
-- credit_notes links each to the sale it reverses; a line names the original's itemSeq.
ALTER TABLE sales ADD COLUMN rcpt_ty_cd TEXT NOT NULL DEFAULT 'S'
    CONSTRAINT sales_rcpt_ty_cd_check CHECK (rcpt_ty_cd IN ('S', 'R'));
ALTER TABLE sale_lines ADD COLUMN original_item_seq INTEGER;

CREATE TABLE credit_notes (
    sale_id           INTEGER NOT NULL CONSTRAINT credit_notes_pk PRIMARY KEY,
    tenant_id         INTEGER NOT NULL,
    branch_id         INTEGER NOT NULL,
    original_sale_id  INTEGER NOT NULL,
    -- KRA's refund reason, code class 32.
    rfd_rsn_cd        TEXT NOT NULL,
    reason            TEXT,
    CONSTRAINT credit_notes_sale_fk FOREIGN KEY (sale_id, tenant_id, branch_id)
        REFERENCES sales (id, tenant_id, branch_id),
    CONSTRAINT credit_notes_original_fk FOREIGN KEY (original_sale_id, tenant_id, branch_id)
        REFERENCES sales (id, tenant_id, branch_id)
);
CREATE INDEX credit_notes_by_original ON credit_notes (tenant_id, branch_id, original_sale_id);
