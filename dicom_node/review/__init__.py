"""Review before sending: jobs of a rule with ``review = "required"`` are held with their outputs written
until a physicist or admin decides.

- :mod:`.events`: the one place where "review needed" is raised (the worker calls it when it holds a job)
- :mod:`.held`: what the worker keeps beside a held job's objects (the objects, the structure volumes)
- :mod:`.labels`: the job's kept label map read back (volumes, the structures a subset keeps)
- :mod:`.queue`: the jobs in review, with waited time, rule, model and structures (volumes, colours)
- :mod:`.decisions`: approve (all, or a subset: objects rebuilt), reject with a reason; audited
- :mod:`.rebuild`: the objects written again with only the kept structures, approved
The SQL is in :mod:`dicom_node.db.review`.
"""
